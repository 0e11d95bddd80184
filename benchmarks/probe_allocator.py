"""Probe what the CUDA caching allocator's history records on this machine (one-off check)."""
import sys, torch, json, importlib.util
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory)
print("has _set_memory_metadata", hasattr(torch.cuda.memory, "_set_memory_metadata"))
for m in ["diffusers", "textual", "pynvml", "pandas", "pyarrow", "altair", "vl_convert", "lpips", "rich"]:
    print(m, importlib.util.find_spec(m) is not None)
torch.cuda.reset_peak_memory_stats()
torch.cuda.memory._record_memory_history("all", context=None, stacks="python", max_entries=10_000_000)
base = torch.cuda.memory_allocated()
torch.cuda.memory._set_memory_metadata("ctx1")
a = torch.empty(1000, device="cuda")            # 4000 B
b = torch.empty(3 * 1024 * 1024 + 7, dtype=torch.uint8, device="cuda")
torch.cuda.memory._set_memory_metadata("ctx2")
c = torch.empty(100, dtype=torch.uint8, device="cuda")
del b
d = torch.empty(2 * 1024 * 1024 + 100, dtype=torch.uint8, device="cuda")  # reuses b's block unsplit?
print("allocated", torch.cuda.memory_allocated() - base, "max", torch.cuda.max_memory_allocated())
snap = torch.cuda.memory._snapshot()
tr = snap["device_traces"][0]
print("n entries", len(tr), "keys", sorted(tr[0].keys()))
live = 0
for e in tr:
    print({k: v for k, v in e.items() if k != "frames"})
    if e["action"] == "alloc": live += e["size"]
    if e["action"] == "free_completed": live -= e["size"]
print("replayed", live)
torch.cuda.memory._record_memory_history(None)
x = torch.randn(1, 8, 128, 64, device="cuda", dtype=torch.bfloat16)
with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
    y = torch.nn.functional.scaled_dot_product_attention(x, x, x)
print("flash ok", y.shape)
import subprocess; print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"], capture_output=True, text=True).stdout)
