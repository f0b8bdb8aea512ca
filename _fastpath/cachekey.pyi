from typing import Any, Final

FORMAT_VERSION: Final[int]
IGNORED_FIELDS: Final[frozenset[str]]
MAX_DEPTH: Final[int]

def canonical(route: str, request: dict[str, Any]) -> bytes: ...
def cache_key(route: str, request: dict[str, Any], namespace: str = "") -> bytes: ...
