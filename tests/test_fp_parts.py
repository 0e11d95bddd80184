"""Full-precision parts of a method's state own their tokens: never a view that keeps the layer's
whole buffer alive (under `torch.inference_mode()`, where the rollout runs, views are untracked)."""
from __future__ import annotations

import pytest
import torch

from methods import KVCall, get_method_class


def test_owns_storage_tells_slices_from_whole_tensors_also_in_inference_mode() -> None:
    from methods.schemes import owns_storage

    with torch.inference_mode():
        x = torch.randn(1, 288, 2, 32)
        assert owns_storage(x) and not owns_storage(x[:, :24]) and not owns_storage(x[:, 24:])
        assert not x[:, :24]._is_view()  # why `_is_view()` could not decide


@pytest.mark.parametrize("name", ["rtn_int4_recent2", "quarot_kv_int4_recent2"])
def test_recent_window_state_holds_only_its_tokens(name: str) -> None:
    call = KVCall(layer=0, num_layers=2, chunk=3, pass_name="refresh", step=None, write_start=216, write_end=288,
                  written=288, capacity=288, tokens_per_frame=24)
    with torch.inference_mode():
        k, v = torch.randn(1, 288, 2, 32), torch.randn(1, 288, 2, 32)
        state = get_method_class(name)(storage="int8").encode(k, v, call)
    fp = {n: t for n, t in state.tensors.items() if state.categories[n] == "kv_fp"}
    assert fp, "the recent window is kept in full precision"
    for n, t in fp.items():
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size() < k.numel() * k.element_size(), n
        assert t.untyped_storage().data_ptr() not in (k.untyped_storage().data_ptr(), v.untyped_storage().data_ptr())
    # before: the window was a slice of the whole K/V and kept all of it alive
    window = 144 * 2 * 32 * 4  # 2 chunks of 72 tokens, float32
    assert sum(t.untyped_storage().nbytes() for t in fp.values()) == 2 * window
