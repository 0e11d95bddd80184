"""Issue 6 / DESIGN section 10: every bad argument gets one line naming the thing and a hint, exit 2,
no traceback, and no trace folder is written for a `kvprof trace` that was refused."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from kvprof.cli import EXIT_USAGE, main
from kvprof.workload.config import ModelConfig
from methods import method_names


@dataclass
class Case:
    argv: Callable[["Files"], list[str]]
    says: str  # names the thing that is wrong
    hint: str  # and what to do


class Files:
    """Inputs the cases point at, made once per test in a private folder."""

    def __init__(self, root: Path, good_trace: Path):
        self.root = root
        self.out = root / "out"
        self.missing = root / "no-such-file.pt"
        self.folder = root / "a-folder"
        self.folder.mkdir()
        self.garbage = root / "garbage.pt"
        self.garbage.write_bytes(b"this is not a torch file\n")
        self.wrong_embeds = root / "embeds.pt"
        torch.save(torch.zeros(4, 7), self.wrong_embeds)
        self.wrong_ckpt = root / "ckpt.pt"
        torch.save({"generator": {"blocks.0.nonsense.weight": torch.zeros(2)}}, self.wrong_ckpt)
        self.not_a_trace = root / "empty-folder"
        self.not_a_trace.mkdir()
        self.a_file = root / "a-file.txt"
        self.a_file.write_text("hello\n")
        self.newer = root / "newer"
        shutil.copytree(good_trace, self.newer)
        meta = json.loads((self.newer / "meta.json").read_text())
        (self.newer / "meta.json").write_text(json.dumps({**meta, "schema_version": "2.0"}))
        self.good = good_trace
        self.report_dir = root / "report.md"  # a folder named like the output file
        self.report_dir.mkdir()


def trace(*args: str) -> Callable[[Files], list[str]]:
    return lambda f: ["trace", "--out", str(f.out), "--run-id", "refused", *args]


CASES: dict[str, Case] = {
    # the method and its parameters
    "unknown method": Case(trace("--method", "prq_in4"), "unknown method 'prq_in4'", "did you mean 'prq_int4'"),
    "unknown method, far": Case(trace("--method", "zzzz"), "unknown method 'zzzz'", "see 'kvprof methods'"),
    "unknown parameter": Case(trace("--method", "prq_int4", "--param", "bitz=3"), "no parameter 'bitz'",
                              "its parameters: residual_bits, slice_groups"),
    "parameter of a method without any": Case(trace("--param", "bits=3"), "method 'bf16' has no parameter 'bits'",
                                              "see 'kvprof methods bf16'"),
    "parameter value unreadable": Case(trace("--method", "prq_int4", "--param", "residual_bits=four"),
                                       "parameter 'residual_bits' of 'prq_int4': cannot read 'four'", "bits of the residual"),
    "parameter value out of range": Case(trace("--method", "prq_int4", "--param", "residual_bits=9"),
                                         "'residual_bits' of 'prq_int4': 9 is out of range", "an integer in [2, 7]"),
    "parameter without =": Case(trace("--param", "bits"), "--param 'bits' must be name=value", "kvprof trace --help"),
    "unknown methods NAME": Case(lambda f: ["methods", "prq_in4"], "unknown method 'prq_in4'", "did you mean 'prq_int4'"),
    # sizes
    "budget unreadable": Case(trace("--budget", "lots"), "--budget: cannot read size 'lots'", "write e.g. '24GiB'"),
    "budget unit": Case(trace("--budget", "24GiBs"), "--budget: cannot read size '24GiBs'", "write e.g. '24GiB'"),
    "budget zero": Case(trace("--budget", "0"), "--budget: size must be positive", "24GiB"),
    "budget below one byte": Case(trace("--budget", "0.1"), "--budget: '0.1' is less than one byte", "write e.g. '24GiB'"),
    "budget negative": Case(trace("--budget=-1GiB"), "--budget: cannot read size '-1GiB'", "write e.g."),
    # workload shape
    "frames not a multiple of the chunk": Case(trace("--frames", "10"), "--frames 10: must be a positive multiple of the chunk size (3",
                                               "try --frames 9"),
    "frames zero": Case(trace("--frames", "0"), "--frames 0: must be a positive multiple", "try --frames 3"),
    "frames negative": Case(trace("--frames", "-6"), "--frames -6: must be a positive multiple", "try --frames 3"),
    "frames not a number": Case(trace("--frames", "ten"), "argument --frames: invalid int value: 'ten'", "kvprof trace --help"),
    "rolling not a multiple": Case(trace("--rolling", "10"), "--rolling 10: must be a multiple of 3 frames", "try --rolling"),
    "rolling not above the sink": Case(trace("--rolling", "6", "--sink", "6"), "--rolling 6: must be a multiple of 3 frames larger than --sink (6)",
                                       "try --rolling 9"),
    "rolling zero": Case(trace("--rolling", "0"), "--rolling 0:", "try --rolling 3"),
    "sink not a multiple": Case(trace("--rolling", "9", "--sink", "2"), "--sink 2: must be a multiple of 3", "try --sink 3"),
    "sink negative": Case(trace("--rolling", "9", "--sink", "-3"), "--sink -3: must be a multiple of 3 frames, 0 or more", "try --sink 3"),
    "sink without rolling": Case(trace("--sink", "3"), "--sink 3: sink frames belong to a rolling cache", "add --rolling W"),
    "seed negative": Case(trace("--seed", "-1"), "--seed -1: must be 0 or more", "0 or more"),
    # names of configs, integrations, storages, devices, dtypes
    "unknown config": Case(trace("--config", "tinny"), "unknown model config 'tinny'", "did you mean 'tiny'"),
    "unknown integration": Case(trace("--integration", "stagd"), "--integration 'stagd': unknown integration",
                                "did you mean 'staged'? choose study or staged"),
    "unknown codes": Case(trace("--codes", "int4"), "--codes 'int4': not a code storage of integration 'study'", "choose int8, int16"),
    "codes of the other integration": Case(trace("--codes", "packed"), "--codes 'packed': not a code storage of integration 'study'",
                                           "choose int8, int16"),
    "unknown device": Case(trace("--device", "tpu"), "--device 'tpu': unknown device", "use 'cpu' or 'cuda[:N]'"),
    "meta device": Case(trace("--device", "meta"), "--device 'meta': unknown device", "use 'cpu' or 'cuda[:N]'"),
    "unknown dtype": Case(trace("--dtype", "float16"), "--dtype 'float16': unknown dtype", "choose float32 or bfloat16"),
    # input files
    "checkpoint missing": Case(lambda f: trace("--checkpoint", str(f.missing))(f), "--checkpoint", "no such file; check the path"),
    "checkpoint is a folder": Case(lambda f: trace("--checkpoint", str(f.folder))(f), "is a folder", "pass the file itself"),
    "checkpoint unreadable": Case(lambda f: trace("--checkpoint", str(f.garbage))(f), "garbage.pt: unreadable (",
                                  "it must be a Wan / Self-Forcing DiT state dict for config 'tiny'"),
    "checkpoint of another model": Case(lambda f: trace("--checkpoint", str(f.wrong_ckpt))(f), "missing keys",
                                        "it must be a Wan / Self-Forcing DiT state dict"),
    "embeddings missing": Case(lambda f: trace("--prompt-embeds", str(f.missing))(f), "--prompt-embeds", "no such file; check the path"),
    "embeddings unreadable": Case(lambda f: trace("--prompt-embeds", str(f.garbage))(f), "garbage.pt: cannot read a tensor (",
                                  "save one with torch.save"),
    "embeddings of the wrong width": Case(lambda f: trace("--prompt-embeds", str(f.wrong_embeds))(f), "expected a tensor [n, 32]",
                                          "got (4, 7)"),
    "vae not a folder": Case(lambda f: trace("--vae", str(f.garbage))(f), "--vae", "pass the folder that holds config.json"),
    "vae folder without config": Case(lambda f: trace("--vae", str(f.folder))(f), "no config.json", "pass a diffusers Wan VAE folder"),
    # the output
    "out is a file": Case(lambda f: ["trace", "--out", str(f.a_file), "--run-id", "x"], "is a file, not a folder", "pick another --out"),
    "out under a file": Case(lambda f: ["trace", "--out", str(f.a_file / "sub"), "--run-id", "x"],
                             "a-file.txt is a file, not a folder", "pick another --out"),
    "run id with a slash": Case(lambda f: ["trace", "--out", str(f.out), "--run-id", "a/b"], "--run-id 'a/b': must be a plain folder name",
                                "e.g. --run-id my-run"),
    "run id exists": Case(lambda f: ["trace", "--out", str(f.good.parent), "--run-id", f.good.name], "a trace with this run id exists",
                          "pick another --run-id"),
    "report to a folder": Case(lambda f: ["report", str(f.good), "-o", str(f.report_dir)], "is a folder", "name the report file"),
    "report into a missing folder": Case(lambda f: ["report", str(f.good), "-o", str(f.root / "nope" / "r.md")], "does not exist",
                                         "create it first"),
    "report format": Case(lambda f: ["report", str(f.good), "-o", str(f.root / "r.docx")], "unknown report format '.docx'",
                          "use one of .html"),
    "report buckets": Case(lambda f: ["report", str(f.good), "-o", str(f.root / "r.md"), "--buckets", "0"], "--buckets 0", "at least 1"),
    "report scale": Case(lambda f: ["report", str(f.good), "-o", str(f.root / "r.png"), "--scale", "0"], "--scale 0.0", "must be positive"),
    "export to a folder": Case(lambda f: ["export", str(f.good), "--format", "perfetto", "-o", str(f.folder)], "is a folder",
                               "writes one file"),
    "export csv over a file": Case(lambda f: ["export", str(f.good), "--format", "csv", "-o", str(f.a_file)], "exists and is not a folder",
                                   "one file per table"),
    "export format": Case(lambda f: ["export", str(f.good), "--format", "svg"], "argument --format: invalid choice: 'svg'",
                          "kvprof export --help"),
    "compare sort": Case(lambda f: ["compare", str(f.good), "--sort", "nope"], "--sort 'nope': no such column", "prefix '-'"),
    "unknown command": Case(lambda f: ["trcae"], "invalid choice: 'trcae'", "see 'kvprof --help'"),
}

if Path("/proc/self").is_dir():  # a place nobody can write, even root
    CASES["report into /proc"] = Case(lambda f: ["report", str(f.good), "-o", "/proc/kvprof-test.md"],
                                      "cannot write /proc/kvprof-test.md", "pick a writable path")
    CASES["export into /proc"] = Case(lambda f: ["export", str(f.good), "--format", "perfetto", "-o", "/proc/kvprof.json"],
                                      "cannot write /proc/kvprof.json", "pick a writable path")
    CASES["trace out in /proc"] = Case(lambda f: ["trace", "--out", "/proc/kvprof-test", "--run-id", "x"],
                                       "--out /proc/kvprof-test: cannot write there", "pick a writable folder")

# a folder that is not a trace, and a trace of a newer schema, for every command that reads traces
READERS: dict[str, Callable[[Path, Files], list[str]]] = {
    "summary": lambda p, f: ["summary", str(p)],
    "diagnose": lambda p, f: ["diagnose", str(p)],
    "diagnose --baseline": lambda p, f: ["diagnose", str(f.good), "--baseline", str(p)],
    "report": lambda p, f: ["report", str(p), "-o", str(f.root / "r.md")],
    "compare": lambda p, f: ["compare", str(f.good), str(p)],
    "compare --baseline": lambda p, f: ["compare", str(f.good), "--baseline", str(p)],
    "export": lambda p, f: ["export", str(p), "--format", "csv", "-o", str(f.root / "csv")],
    "tui": lambda p, f: ["tui", str(p)],
}
for name, make in READERS.items():
    CASES[f"{name}: not a trace"] = Case(lambda f, make=make: make(f.not_a_trace, f), "not a trace folder (no meta.json)",
                                         "written by 'kvprof trace'")
    CASES[f"{name}: no such folder"] = Case(lambda f, make=make: make(f.root / "gone", f), "not a trace folder (no such directory)",
                                            "written by 'kvprof trace'")
    CASES[f"{name}: a file"] = Case(lambda f, make=make: make(f.a_file, f), "a-file.txt: is a file, not a trace folder",
                                    "written by 'kvprof trace'")
    CASES[f"{name}: newer schema"] = Case(lambda f, make=make: make(f.newer, f), "schema 2.0 is newer than this kvprof reads (1.0)",
                                          "upgrade kvprof")


@pytest.fixture(scope="module")
def files(trace_factory, tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("cli_errors"), trace_factory(method="bf16", frames=3))


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_one_line_with_a_hint_and_exit_2(case: str, files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    c = CASES[case]
    argv = c.argv(files)
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == EXIT_USAGE, (argv, err)
    assert "Traceback" not in captured.err + captured.out
    assert err.startswith("kvprof: error: ") and "\n" not in err, err
    assert c.says in err, (c.says, err)
    assert c.hint in err, (c.hint, err)
    assert not (files.out / "refused").exists()  # a refused trace writes nothing


def test_a_refused_trace_says_its_error_on_the_first_line_of_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    # the progress display used to leave a blank line on a stderr that is not a terminal
    assert main(["trace", "--method", "nope"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.err.startswith("kvprof: error: unknown method 'nope'"), repr(captured.err[:80])
    assert captured.out == ""


def test_the_registry_has_33_methods_and_each_resolves() -> None:
    from kvprof.runner import TraceRequest, resolve

    names = method_names()
    assert len(names) == 33
    for name in names:
        resolve(TraceRequest(method=name, device="cpu"))


def test_unknown_method_lists_the_closest_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--method", "rtn_int"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "did you mean 'rtn_int4' or " in err  # up to three close names


def test_embeddings_of_the_right_width_are_accepted(files: Files) -> None:
    from kvprof.runner import TraceRequest, check_inputs, resolve

    path = files.root / "good-embeds.pt"
    torch.save({"context": torch.zeros(5, ModelConfig.from_name("tiny").text_dim)}, path)
    req = TraceRequest(prompt_embeds=path, device="cpu")
    check_inputs(req, resolve(req).cfg)  # no error
