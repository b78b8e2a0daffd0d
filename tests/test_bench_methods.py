"""``fastkd bench methods``: each method's step on a pair against the student alone (fastkd/bench/methods.py), on
resnet32 -> shufflenet_v2_x0_5 at 16 px: the rows, what each step trained, a pair a method cannot take, and the
command's output and one-line errors."""
from __future__ import annotations

import json
import math
import statistics

import pytest

from fastkd.bench.methods import run_methods_bench, table
from fastkd.cli import main

PAIR = ("resnet32", "shufflenet_v2_x0_5")
SMALL = dict(res=16, batch_size=8, steps=2, warmup=0)


@pytest.fixture(scope="module")
def rows():
    return run_methods_bench(*PAIR, ["kd", "rkd", "fitnets", "fsp", "sskd", "kd+pkt", "kd", "at"], progress=False,
                             options={"at": {"stages": ["stage1", "stage4"]}}, **SMALL)


def test_rows_start_with_the_student_alone_and_each_method_trains_with_its_terms(rows):
    assert [r["method"] for r in rows] == ["ce", "kd", "rkd", "fitnets", "fsp", "sskd", "kd+pkt", "at"]  # kd once
    by = {r["method"]: r for r in rows}
    assert by["ce"]["x_ce"] == 1.0 and by["ce"]["terms"] == [] and by["ce"]["adapter_params"] == 0
    # ce timed first and last: its row is the median of both runs' steps
    assert len(by["ce"]["step_ms"]) == 2 * SMALL["steps"] and len(by["kd"]["step_ms"]) == SMALL["steps"]
    assert by["ce"]["ms_per_step"] == pytest.approx(statistics.median(by["ce"]["step_ms"]))
    for r in rows[:-1]:
        assert r["ms_per_step"] > 0 and r["x_ce"] == pytest.approx(r["ms_per_step"] / by["ce"]["ms_per_step"])
        assert math.isfinite(r["first_loss"]) and r["last_loss"] != r["first_loss"]  # the SGD step moved the student
    assert by["kd"]["terms"] == ["kd"] and by["rkd"]["terms"] == ["rkd.angle", "rkd.distance"]
    assert by["sskd"]["adapter_params"] > 0 and by["sskd"]["terms"] == ["sskd.kd", "sskd.ss", "sskd.tf"]
    # the main stage: FitNets trains on its term after the hints; FSP's work is its first stage
    assert by["fitnets"]["terms"] == ["fitnets"] and by["fsp"]["terms"] == [] and by["fsp"]["staged"]


def test_a_method_the_pair_cannot_take_is_a_row_with_its_reason(rows):
    """at was given stage4 (--opt at.stages=stage1,stage4), which resnet32 lacks; a sum of methods is one row."""
    by = {r["method"]: r for r in rows}
    assert by["kd+pkt"]["terms"] == ["kd", "pkt"]
    assert "ms_per_step" not in by["at"] and "needs feature tap 'stage4'" in by["at"]["error"]
    text = table(rows)
    assert "rkd.angle+rkd.distance" in text and "none after its first stage" in text
    assert "| at " in text and "not paired: method at needs feature tap 'stage4'" in text


def test_the_command_prints_the_table_and_writes_json_and_refuses_mistakes_in_one_line(tmp_path, capsys):
    out = tmp_path / "m.json"
    main(["bench", "methods", "--teacher", PAIR[0], "--student", PAIR[1], "--methods", "kd", "--res", "16",
          "--batch-size", "4", "--steps", "1", "--warmup", "0", "--device", "cpu", "--quiet", "--out", str(out)])
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert [r["method"] for r in doc["rows"]] == ["ce", "kd"] and doc["table"] in printed
    assert doc["machine"]["device"] == "cpu" and doc["settings"]["methods"] == ["kd"]
    for extra, message in ((["--methods", "kd,nope"], "unknown method 'nope'"),
                           (["--methods", "kd", "--opt", "at.beta=1"], "--opt"),
                           (["--methods", "kd", "--student", "nope"], "--student nope")):
        bad = tmp_path / "bad.json"
        with pytest.raises(SystemExit) as exc:
            main(["bench", "methods", "--teacher", PAIR[0], "--student", PAIR[1], "--res", "16", "--quiet",
                  "--out", str(bad), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and message in err[0], err
        assert not bad.exists()
