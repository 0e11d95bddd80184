"""Profile your own code (issue 18): the API fixes, instrument_module, the Self-Forcing adapter on
a pipeline of upstream's shape (tests/upstream_shaped.py), `kvprof run`, plugin methods."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

import kvprof.api as kv
import upstream_shaped as us
from kvprof.errors import UsageError
from kvprof.integrations.self_forcing import instrument
from kvprof.read.trace import load_trace

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvprof.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=300)


# --------------------------------------------------------------------------- API fixes
def test_bad_meta_is_refused_when_the_trace_opens(tmp_path):
    """1: meta the readers cannot open fails at once, not after the run when the trace closes."""
    with pytest.raises(UsageError, match="field 'config' should be an object"):
        kv.trace(tmp_path / "t", meta={"config": "tiny"}, device="cpu")
    assert not (tmp_path / "t").exists()
    with pytest.raises(UsageError, match="JSON"):
        kv.trace(tmp_path / "t", meta={"mine": torch.zeros(1)}, device="cpu")


def test_containers_with_non_tensors_can_be_tagged(tmp_path):
    """3: upstream's cross-attention dicts hold `"is_init": False` next to the tensors."""
    cache = [{"k": torch.zeros(4, 8), "v": torch.zeros(4, 8), "is_init": False, "n": 3}]
    with kv.trace(tmp_path / "t", device="cpu") as t:
        t.register(cache, "cross_kv", "cross")
        with t.stage("step"), t.category("activations"):
            (cache[0]["k"] + 1).sum()
    a = t.trace().allocations
    assert sorted(a.loc[a["category"] == "cross_kv", "name"]) == ["cross[0].k", "cross[0].v"]
    assert t.status == "complete"
    with pytest.raises(TypeError, match="cannot tag a bool"):
        kv.tag_tensor(False, "weights")


def test_watch_retags_tensors_swapped_into_a_container(tmp_path):
    """4: tags stick to tensor objects; `watch` follows the container when code replaces them."""
    cache = {"k": torch.zeros(16, 16), "is_init": False}
    with kv.trace(tmp_path / "t", device="cpu") as t:
        t.watch(cache, "cross_kv", "cross")
        with t.stage("step"), t.category("activations"):
            cache["k"] = torch.ones(32, 32)  # replaced on first use, as upstream does
    a = t.trace().allocations
    swapped = a[a["bytes"] == 32 * 32 * 4]
    assert list(swapped["category"]) == ["cross_kv"] and list(swapped["name"]) == ["cross.k"]


def test_register_module_includes_plain_tensor_attributes(tmp_path):
    """5: a RoPE table kept as a plain attribute (upstream's `freqs`) is the module's too."""
    model = torch.nn.Linear(8, 8)
    model.freqs = torch.randn(64, 8)
    with kv.trace(tmp_path / "t", device="cpu") as t:
        t.register(model, "weights", "dit")
        with t.stage("step"), t.category("activations"):
            (model.freqs[:4] * 2).sum()
    a = t.trace().allocations
    freqs = a[a["name"] == "dit.freqs"]
    assert list(freqs["category"]) == ["weights"] and int(freqs["bytes"].iat[0]) == 64 * 8 * 4


def test_unregistered_tensor_from_before_is_not_a_new_allocation_of_a_stage(tmp_path):
    """6: on CPU a tensor made before tracing, seen first through a view, is held from before
    tracing (outside any stage, unattributed), as on CUDA, not allocated in that stage."""
    big = torch.randn(256, 256)
    with kv.trace(tmp_path / "t", device="cpu") as t:
        with t.stage("step"), t.category("activations"):
            view = big[:8]
            (view * 2).sum()
    a = t.trace().allocations
    held = a[a["bytes"] == 256 * 256 * 4]
    assert len(held) == 1
    assert held["category"].iat[0] == "unattributed" and held["name"].iat[0] == "live before tracing"
    assert int(held["span_id"].iat[0]) == 0
    assert t.trace().meta["unregistered_before_bytes"] == 256 * 256 * 4


def test_instrument_module_gives_layer_stages_and_plain_labels(tmp_path):
    """7: per-layer stages for any nn.Module stack without touching its forward; an API trace
    without method or config is labelled by its run id, not '?/?/? (?, ?f)'."""
    from kvprof.read.compare import trace_label

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(3)]))
    hooks = kv.instrument_module(model, category="activations")
    x = torch.randn(2, 8)
    with kv.trace(tmp_path / "mine", device="cpu") as t:
        for block in model[1]:
            x = block(x)
    paths = sorted(t.trace().spans["path"])
    assert paths == ["layer[0]", "layer[1]", "layer[2]"]
    hooks.remove()
    label = trace_label(load_trace(tmp_path / "mine"))
    assert "?" not in label and label.startswith("mine")


# --------------------------------------------------------------------------- the Self-Forcing adapter
def _hand_tagged(pipe: us.Pipeline, noise: torch.Tensor, folder: Path) -> kv.TraceRun:
    """The same rollout tagged by hand through the API: what the adapter must reproduce."""
    gen = pipe.generator
    kv.instrument_module(gen.model, gen.model.blocks)
    calls = {"n": 0}
    steps = len(pipe.denoising_step_list)

    def gen_call(orig):
        def call(**kw):
            i = calls["n"]
            calls["n"] += 1
            chunk, j = divmod(i, steps + 1)
            name = ("denoise", j) if j < steps else ("refresh", None)
            with kv.stage(*name), kv.category("activations"):
                out = orig(**kw)
            for l, d in enumerate(pipe.crossattn_cache):
                kv.tag_tensor({"k": d["k"], "v": d["v"]}, "cross_kv", f"cross[{l}]")
            kv.register(gen, "weights", "generator")
            return out
        return call

    orig_call = gen.__call__
    with kv.trace(folder, device="cpu") as t:
        for part in ("generator", "text_encoder", "vae"):
            t.register(getattr(pipe, part), "weights", part)
        t.register(noise, "latents", "noise")
        with t.stage("rollout"), t.category("latents"):
            with t.stage("text_embed"), t.category("activations"):
                cond = pipe.text_encoder(text_prompts=["a cat"])
            output = torch.zeros_like(noise)
            with t.stage("kv_init"), t.category("kv_fp"):
                pipe._initialize_kv_cache(batch_size=1, dtype=noise.dtype, device=noise.device)
            for d in pipe.kv_cache1:
                t.tag_tensor({"i": d["global_end_index"], "j": d["local_end_index"]}, "kv_meta")
            with t.stage("cross_kv"), t.category("cross_kv"):
                pipe._initialize_crossattn_cache(batch_size=1, dtype=noise.dtype, device=noise.device)
            call = gen_call(orig_call)
            start = 0
            for c in range(noise.shape[1] // 3):
                with t.stage("chunk", c):
                    x = noise[:, start:start + 3]
                    for index, ts in enumerate(pipe.denoising_step_list):
                        timestep = torch.ones([1, 3], dtype=torch.int64) * ts
                        _, pred = call(noisy_image_or_video=x, conditional_dict=cond, timestep=timestep,
                                       kv_cache=pipe.kv_cache1, crossattn_cache=pipe.crossattn_cache,
                                       current_start=start * pipe.frame_seq_length)
                        if index < steps - 1:
                            s = float(pipe.denoising_step_list[index + 1]) / 1000
                            x = (1 - s) * pred + s * torch.randn_like(pred)
                    output[:, start:start + 3] = pred
                    call(noisy_image_or_video=pred, conditional_dict=cond, timestep=torch.ones_like(timestep) * 0,
                         kv_cache=pipe.kv_cache1, crossattn_cache=pipe.crossattn_cache,
                         current_start=start * pipe.frame_seq_length)
                start += 3
            with t.stage("decode"), t.category("decode"):
                video = pipe.vae.decode_to_pixel(output)
            (video * 0.5 + 0.5).clamp(0, 1)
    return t


@pytest.fixture(scope="module")
def upstream_traces(tmp_path_factory) -> tuple[Path, Path, torch.Tensor, torch.Tensor]:
    out = tmp_path_factory.mktemp("sf")
    pipe, noise = us.make()
    plain = pipe.inference(noise, ["a cat"])
    pipe, noise = us.make()
    instrument(pipe)
    with kv.trace(out / "instrumented", device="cpu"):
        video = pipe.inference(noise, ["a cat"])
    torch.manual_seed(0)  # the same draws as us.make() made before its noise
    pipe2, noise2 = us.make()
    _hand_tagged(pipe2, noise2, out / "hand")
    return out / "instrumented", out / "hand", plain, video


def test_instrumented_pipeline_runs_unchanged_and_matches_hand_tagging(upstream_traces):
    inst, hand, plain, video = upstream_traces
    assert torch.equal(plain, video)  # the hooks change nothing the pipeline computes
    a, b = load_trace(inst), load_trace(hand)
    sa, sb = a.summary, b.summary
    counts = lambda s: {r.stage: r.count for r in s.stage_times}  # noqa: E731
    assert counts(sa) == counts(sb)
    assert counts(sa)["chunk"] == 2 and counts(sa)["denoise"] == 8 and counts(sa)["refresh"] == 2
    assert counts(sa)["layer"] == 2 * (8 + 2) and counts(sa)["decode"] == 1
    assert sa.peak.bytes == sb.peak.bytes
    assert sa.peak.by_category == sb.peak.by_category
    cats = a.allocations.groupby("category")["bytes"].sum()
    assert cats["kv_fp"] == 2 * 2 * (4 * 3 * 16) * us.DIM * 4  # layers x (k, v) x tokens x dim x fp32
    assert cats["cross_kv"] == 2 * 2 * 2 * us.TEXT_LEN * us.DIM * 4  # zeros at init, then the swapped-in K/V
    assert cats["kv_meta"] == 2 * 2 * 8 and a.meta["rollout"]["cache_tokens"] == 4 * 3 * 16
    weights = a.allocations[a.allocations["name"] == "generator.model.freqs"]
    assert set(weights["category"]) == {"weights"} and len(weights) == 2  # float64 table, then the one it became


def test_every_reader_opens_the_instrumented_trace(upstream_traces, tmp_path):
    from kvprof.read.compare import compare_table
    from kvprof.diagnose import diagnose
    from kvprof.read.report import write_report
    from tui.model import build_view

    inst, hand, _, _ = upstream_traces
    d = diagnose(inst, traces_root=[tmp_path])
    text = d.render("text")
    assert "bf16 (upstream cache)" in text and "self-forcing 2x32" in text and "?" not in d.label
    assert "None peaks" not in text and "quantization metadata" not in text and "next to the codes" not in text
    assert len(compare_table([inst, hand])) == 2
    md = tmp_path / "r.md"
    write_report([inst], md)
    assert "bf16 (upstream cache)/self-forcing" in md.read_text()
    view = build_view(load_trace(inst))
    assert view.peak is not None and view.peak.bytes == load_trace(inst).summary.peak.bytes
    r = _cli("summary", str(inst))
    assert r.returncode == 0 and "rollout/chunk[" in r.stdout


def test_a_second_trace_of_the_same_pipeline_reattributes_its_caches(tmp_path):
    """The caches made in the first run are reused (indices replaced, cross K/V swapped again)."""
    pipe, noise = us.make()
    instrument(pipe)
    assert instrument(pipe) is instrument(pipe)  # once per pipeline
    for name in ("one", "two"):
        with kv.trace(tmp_path / name, device="cpu") as t, torch.no_grad():  # no graph keeping run one's tensors
            pipe.inference(noise, ["a cat"])
    a = t.trace().allocations
    live_end = a[a["q_free"] == -1].groupby("category")["bytes"].sum()
    assert live_end["kv_fp"] == 2 * 2 * (4 * 3 * 16) * us.DIM * 4 and live_end["cross_kv"] == 2 * 2 * us.TEXT_LEN * us.DIM * 4
    assert live_end["kv_meta"] == 2 * 2 * 8
    assert {r.stage: r.count for r in t.summary.stage_times}["refresh"] == 2


def test_instrument_refuses_objects_of_another_shape():
    with pytest.raises(TypeError, match="lacks generator"):
        instrument(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------- kvprof run
SCRIPT = """
import sys, torch, upstream_shaped as us
pipe, noise = us.make()
video = pipe.inference(noise, ["a cat"])
print("frames", video.shape[1], "args", sys.argv[1:])
"""


def test_kvprof_run_instruments_the_pipelines_a_script_builds(tmp_path):
    script = tmp_path / "mine.py"
    script.write_text(SCRIPT)
    r = _cli("run", "--instrument", "self-forcing", "--device", "cpu", "--out", str(tmp_path), "--run-id", "sf",
             "--", "python", str(script), "--steps", "4")
    assert r.returncode == 0, r.stderr
    assert "frames 6 args ['--steps', '4']" in r.stdout
    t = load_trace(tmp_path / "sf")
    assert t.meta["method"] == "bf16 (upstream cache)" and t.meta["source"] == "kvprof run"
    counts = {row.stage: row.count for row in t.summary.stage_times}
    assert counts["chunk"] == 2 and counts["refresh"] == 2 and counts["denoise"] == 8
    bare = _cli("run", "--device", "cpu", "--out", str(tmp_path), "--run-id", "bare", "--", str(script))
    assert bare.returncode == 0 and "chunk" not in set(load_trace(tmp_path / "bare").spans["name"])


def test_the_import_hook_never_runs_a_library_class_s_own_lookups() -> None:
    # diffusers' placeholder classes raise from their metaclass's __getattr__ (seen on the GPU
    # machine, where wheels sit outside the Python installation: 'KeyError: auto_round' ended the script)
    import types

    from kvprof.integrations.run import PipelineFinder

    class Lazy(type):
        def __getattr__(cls, name):
            raise KeyError(name)

    module = types.ModuleType("lazy_lib")
    module.Dummy = Lazy("Dummy", (), {"__module__": "lazy_lib"})
    module.Shaped = type("Shaped", (), {"__module__": "lazy_lib", "inference": lambda self: None,
                                        "_initialize_kv_cache": lambda self: None,
                                        "_initialize_crossattn_cache": lambda self: None})
    hook = PipelineFinder()
    hook.after_import(module)
    assert hook.patched == ["lazy_lib.Shaped"]


def test_kvprof_run_passes_on_the_script_exit_code_and_errors(tmp_path):
    (tmp_path / "bad.py").write_text("import sys\nsys.exit(4)\n")
    r = _cli("run", "--device", "cpu", "--out", str(tmp_path), "--run-id", "x", "--", "python", str(tmp_path / "bad.py"))
    assert r.returncode == 4 and load_trace(tmp_path / "x").status == "complete"
    r = _cli("run", "--device", "cpu", "--out", str(tmp_path), "--", "python", str(tmp_path / "missing.py"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- plugin methods
def test_plugin_method_traces_and_is_listed_with_its_origin(tmp_path, capsys, registry):
    from kvprof.cli import main

    spec = "examples.my_method:TokenInt4Sink"
    assert main(["trace", "--method", spec, "--frames", "3", "--no-decode", "--quiet", "--json", "--out", str(tmp_path),
                 "--run-id", "plug"]) == 0
    t = load_trace(tmp_path / "plug")
    assert t.meta["method"] == "token_int4_sink"
    names = set(t.allocations["name"].dropna())
    assert any(n.endswith("k_codes") for n in names) and any(n.endswith("k_sink") for n in names)
    # diagnose's "make it real" commands name the plugin as it was given: its name alone finds nothing
    from kvprof.diagnose import diagnose

    commands = [p.command for p in diagnose(t).projections if p.command]
    assert commands and all(f"--method {spec} " in c for c in commands)
    capsys.readouterr()
    assert main(["methods", spec, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["origin"] == f"module {spec}"
    assert main(["methods"]) == 0
    assert f"plugin token_int4_sink: module {spec}" in capsys.readouterr().out
    assert main(["methods", "no/such/file.py:TokenInt4Sink"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_plugin_by_file_path_from_another_folder(tmp_path):
    r = _cli("methods", f"{ROOT / 'examples' / 'my_method.py'}:TokenInt4Sink", cwd=tmp_path)
    assert r.returncode == 0 and "token_int4_sink" in r.stdout and "plugin: file" in r.stdout


@pytest.mark.parametrize("body, attr, message", [
    ("raise RuntimeError('boom')", "X", "importing"),
    ("x = 1", "Missing", "has no attribute 'Missing'"),
    ("class X: pass", "X", "is not a KVMethod subclass"),
    ("from methods.reference import *\nimport methods.reference as r\nclass X(r.BF16):\n    pass", "X",
     "is a built-in method's"),
])
def test_a_bad_plugin_exits_2_naming_it(tmp_path, capsys, registry, body, attr, message):
    from kvprof.cli import main

    (tmp_path / "plug.py").write_text(body + "\n")
    code = main(["trace", "--method", f"{tmp_path / 'plug.py'}:{attr}", "--frames", "3", "--no-decode", "--quiet",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "plug.py" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*/meta.json"))  # refused before anything ran


def test_entry_point_plugins_are_found_by_name_and_listed(monkeypatch, registry):
    from methods import get_method_class

    plugins = registry
    ep = metadata.EntryPoint(name="token_int4_sink", value="examples.my_method:TokenInt4Sink", group="kvprof.methods")
    bad = metadata.EntryPoint(name="broken", value="no_such_module_here:Thing", group="kvprof.methods")
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [ep] if group == "kvprof.methods" else [])
    monkeypatch.setattr(plugins, "_ENTRY_POINTS_DONE", False)
    assert get_method_class("token_int4_sink").__name__ == "TokenInt4Sink"
    assert "entry point 'token_int4_sink'" in plugins.origin_of("token_int4_sink")
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [bad])
    monkeypatch.setattr(plugins, "_ENTRY_POINTS_DONE", False)
    with pytest.raises(plugins.PluginError, match="entry point 'broken'.*ModuleNotFoundError"):
        plugins.load_entry_points()

