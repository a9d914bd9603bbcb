"""The tokenizer call's result (`BatchEncoding`) and its padding/truncation rules, as transformers has them."""

from __future__ import annotations

from collections import UserDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_PADDINGS = ("longest", "max_length", "do_not_pad")


class BatchEncoding(UserDict):
    """The tokenizer's result: a dict (`enc["input_ids"]`) that also reads as attributes (`enc.input_ids`)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "data":  # copy/pickle probe these before `data` exists
            raise AttributeError(name)
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; it has {sorted(self.data)}") from None

    def to(self, device: torch.device | str) -> BatchEncoding:
        """Move tensor fields to `device` (as transformers' BatchEncoding.to)."""
        self.data = {k: v.to(device) if hasattr(v, "to") else v for k, v in self.data.items()}
        return self


def strategies(
    padding: bool | str, truncation: bool | str | None, max_length: int | None, model_max_length: int
) -> tuple[str, bool, int | None]:
    """(padding mode, truncate?, max_length) of a tokenizer call, with transformers' defaults."""
    if max_length is not None and (not isinstance(max_length, int) or max_length < 0):
        raise ValueError(f"max_length must be a non-negative int or None, got {max_length!r}.")
    if max_length is not None and padding is False and truncation is None:
        truncation = True  # transformers: a bare max_length means truncation
    if padding is True:
        pad_mode = "longest"
    elif padding is False:
        pad_mode = "do_not_pad"
    elif isinstance(padding, str) and padding in _PADDINGS:
        pad_mode = padding
    else:
        raise ValueError(f"padding={padding!r} is not supported; use True, False or one of {list(_PADDINGS)}.")
    if truncation is None or truncation is False or truncation == "do_not_truncate":
        truncate = False
    elif truncation is True or truncation == "longest_first":
        truncate = True
    else:
        raise ValueError(
            f"truncation={truncation!r} is not supported; use True, False, 'longest_first' or 'do_not_truncate'."
        )
    if max_length is None and (pad_mode == "max_length" or truncate):
        max_length = model_max_length
    return pad_mode, truncate, max_length


def pad_batch(
    ids: list[list[int]], pad_mode: str, max_length: int | None, pad_token_id: int
) -> tuple[list[list[int]], list[list[int]]]:
    """(padded ids, attention masks): to `max_length`, to the longest row, or not at all, on the right."""
    if pad_mode == "max_length":
        target = max_length
    elif pad_mode == "longest":
        target = max((len(s) for s in ids), default=0)
    else:
        target = 0
    masks = [[1] * len(s) + [0] * max(0, target - len(s)) for s in ids]
    ids = [s + [pad_token_id] * max(0, target - len(s)) for s in ids]
    return ids, masks


def to_tensor(rows: list[list[int]], kind: str, name: str) -> list | torch.Tensor:
    """Rows of equal length as a (B, T) int64 tensor (\"pt\") or numpy array (\"np\")."""
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise ValueError(
            f"Cannot make a tensor of {name}: the sequences have different lengths {sorted(lengths)}; "
            "use padding='max_length' (with truncation=True) or padding='longest'."
        )
    if kind == "pt":
        import torch

        return torch.tensor(rows, dtype=torch.long)
    if kind == "np":
        import numpy as np

        return np.asarray(rows, dtype=np.int64)
    raise ValueError(f"return_tensors={kind!r} is not supported; use None, 'pt' or 'np'.")
