from collections.abc import Sequence

def features(
    turns: Sequence[str | bytes],
    dim: int = ...,
    char_lo: int = ...,
    char_hi: int = ...,
    context_weight: float = ...,
    max_bytes: int = ...,
) -> dict[int, float]: ...
def log_length(turns: Sequence[str | bytes], max_bytes: int = 4096) -> float: ...
def softmax(logits: Sequence[float], temperature: float = 1.0) -> list[float]: ...
def train_softmax(
    rows: Sequence[Sequence[tuple[int, float]]],
    labels: Sequence[int],
    n_rows: int,
    n_classes: int,
    epochs: int = 30,
    l2: float = 1e-4,
    lr: float = 0.5,
    seed: int = 0,
    weights: Sequence[float] | None = None,
) -> tuple[list[float], list[float]]: ...

class LinearModel:
    dim: int
    n_classes: int
    char_lo: int
    char_hi: int
    context_weight: float
    max_bytes: int
    length_coef: list[float]
    length_scale: float
    length_offset: float
    default_idf: float
    def __init__(
        self,
        dim: int,
        n_classes: int,
        buckets: Sequence[int],
        idf: Sequence[float],
        weights: Sequence[float],
        bias: Sequence[float],
        default_idf: float = 1.0,
        char_lo: int = 3,
        char_hi: int = 5,
        context_weight: float = 0.5,
        max_bytes: int = 4096,
        length_coef: Sequence[float] = (),
        length_scale: float = 1.0,
        length_offset: float = 0.0,
    ) -> None: ...
    def features(self, turns: Sequence[str | bytes]) -> dict[int, float]: ...
    def vector(self, turns: Sequence[str | bytes]) -> list[tuple[int, float]]: ...
    def logits(self, turns: Sequence[str | bytes]) -> list[float]: ...
    def proba(self, turns: Sequence[str | bytes], temperature: float = 1.0) -> list[float]: ...
