"""Numeric bounds of configuration fields, as msgspec constraints on the Structs' types.

A bound lives on the field it limits, so decoding enforces it and the JSON schema of the
configuration shows it. Each carries its wording: a problem reads ``<path>: must be
<description>``. Bounds that relate two fields (``max_backoff_s >= backoff_s``) stay in
``check``.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

# msgspec constraints must be finite, and an infinite (or absurdly long) time is a typo in a
# configuration file, not a wish: about 31 years.
LONGEST_S = 1e9
LARGEST = 1e18

Seconds = Annotated[float, Meta(gt=0, le=LONGEST_S,
                                description="a positive number of seconds")]
SecondsOrZero = Annotated[float, Meta(ge=0, le=LONGEST_S, description=">= 0 seconds")]
Positive = Annotated[float, Meta(gt=0, le=LARGEST, description="> 0")]
NonNegative = Annotated[float, Meta(ge=0, le=LARGEST, description=">= 0")]
Share = Annotated[float, Meta(ge=0, le=1, description="between 0 and 1")]
Jitter = Annotated[float, Meta(ge=0, lt=1, description="in [0, 1)")]
Rate = Annotated[float, Meta(gt=0, le=1, description="in (0, 1]")]
Percent = Annotated[float, Meta(ge=0, le=100, description="in [0, 100]")]

AtLeastOne = Annotated[int, Meta(ge=1, description=">= 1")]
Count = Annotated[int, Meta(ge=0, description=">= 0")]
ZeroIsNoLimit = Annotated[int, Meta(ge=0, description=">= 0 (0: no limit)")]
Tokens = Annotated[int, Meta(ge=1, description="a number of tokens >= 1")]
# Below this no request line and Host header fit.
HeaderBytes = Annotated[int, Meta(ge=256, description=">= 256")]
