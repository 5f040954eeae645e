"""The report read as a user reads it, on hand-built records and frames: a tie said plainly,
the throughput table led by the figures people read first, noise judged on the step times too,
one number format per kind of figure, memory judged against the memory model's whole
prediction, communication compared like with like, parity runs without a comparable reference
told how to get one, and a record whose figures disagree with its step times flagged instead of
crashing the report."""
import json

import pandas as pd
import pytest

from suite import results
from suite.report import analysis, sections
from suite.report.build import report_sweep


def write(sweep, name, strategy="ddp", optimizer="adamw", steps=None, tokens=None, world=2, micro=2,
          global_batch=4, seq_len=64, step_cv=0.02, compile=False, **axes):
    """An ok training run; its tokens/s per device from its step times unless `tokens`."""
    steps = steps or [0.05] * 10
    per_step = global_batch * seq_len / world
    tokens = per_step / (sum(steps) / len(steps)) if tokens is None else tokens
    metrics = {"tokens_per_s_per_device": tokens, "tokens_per_s": tokens * world, "step_times_s": steps,
               "step_time_median_s": sorted(steps)[len(steps) // 2], "step_time_cv": step_cv,
               "tflops_per_device": 0.01, "mfu": None, "peak_memory_bytes": 409 * 2 ** 20,
               "memory_capacity_bytes": 12_102.4 * 2 ** 20}
    rec = results.make_record(
        run_id=f"{sweep.name}/{name}", sweep_id=sweep.name, status="ok", error=None,
        config={"model": {"name": "tiny"}, "strategy": strategy, "optimizer": optimizer,
                "train": {"micro_batch_size": micro, "compile": compile}},
        metrics=metrics, env={"torch": "2.13.0", "deepspeed": "0.19.8"},
        axes={"model": "tiny", "strategy": strategy, "optimizer": optimizer, "precision": "fp32",
              "world_size": world, "micro_batch_size": micro, "grad_accum_steps": 1, "accelerator": "cpu",
              "global_batch_size": global_batch, "seq_len": seq_len, "compile": compile, "data_parallel": world,
              "tensor_parallel": 1, "pipeline_parallel": 1, "sequence_parallel": 1, **axes},
        started_at="t0", finished_at="t1")
    results.write_record(sweep / name, rec)


def cells(line):
    return [c.strip() for c in line.split("|")[1:-1]]


def table_after(md, heading):
    """The header and rows of the first table after `heading`."""
    lines = md.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append(line)
    return cells(block[0]), [cells(line) for line in block[2:]]


# ---- 1. a tie is no winner -------------------------------------------------------------------

def test_a_tie_is_said_plainly_in_the_header_and_the_best_configuration_table(tmp_path):
    sweep = tmp_path / "sweep"
    noisy = [0.04, 0.06, 0.05, 0.045, 0.055, 0.05, 0.04, 0.06, 0.05, 0.05]
    write(sweep, "0_ddp", "ddp", "sgd_momentum", steps=noisy)
    write(sweep, "1_zero1", "zero1", "adamw", steps=[t * 1.01 for t in noisy])
    write(sweep, "2_zero3", "zero3", "adamw", steps=[0.2] * 10)
    md = report_sweep(sweep).markdown_path.read_text()
    assert ("- best configuration: no clear best for tiny on 2 ranks: ddp / sgd_momentum and zero1 / adamw "
            "are within the noise (add submit.repeats to separate a tie)") in md
    assert "inside the noise (a tie" not in md   # the old count of ties
    header, rows = table_after(md, "## Best configuration")
    row = dict(zip(header, rows[0]))
    assert row["best configuration"] == "no clear best: ddp / sgd_momentum and zero1 / adamw are within the noise"
    assert row["verdict"].startswith("tie")


def test_a_clear_margin_names_the_best_configuration_in_the_header():
    best = pd.DataFrame([{"model": "tiny", "world_size": 2, "configuration": "ddp", "runner_up": "zero3",
                          "margin": 0.5, "verdict": analysis.CLEAR}])
    assert sections.best_line(best) == ("- best configuration: tiny on 2 ranks: ddp, 50.0% ahead of zero3 "
                                        "beyond the noise")


# ---- 2. the figures read first lead; the rest is a details table ------------------------------

def test_the_throughput_table_leads_with_the_figures_read_first_and_the_rest_is_in_details(tmp_path):
    sweep = tmp_path / "sweep"
    for k, (strategy, optimizer) in enumerate((("ddp", "adamw"), ("ddp", "sgd_momentum"), ("zero2", "adamw"))):
        write(sweep, f"{k}_{strategy}_{optimizer}", strategy, optimizer, steps=[0.05 + 0.01 * k] * 10)
    report = report_sweep(sweep)
    md = report.markdown_path.read_text()
    header, rows = table_after(md, "### tiny")
    assert header == ["strategy", "configuration", "tokens/s/device", "95% interval", "TFLOP/s/device", "MFU",
                      "step CV", "too noisy", "peak memory (MiB)"]
    assert [r[:2] for r in rows] == [["ddp", "adamw"], ["ddp", "sgd_momentum"], ["zero2", "adamw"]]
    details, detail_rows = table_after(md, "### Details")
    assert details[:2] == ["model", "configuration"] and "dp x tp x pp x sp" in details and "compiled" in details
    assert "HFU" not in details and "tokens/J" not in details   # no GPU: no value in any row, left out
    assert [r[1] for r in detail_rows] == ["ddp / adamw", "ddp / sgd_momentum", "zero2 / adamw"]
    html = report.html_path.read_text()
    assert html.count("<details><summary>") == 1 and html.count("</details>") == 1


# ---- 3. noise, switches, number formats, order -------------------------------------------------

def test_one_run_whose_steps_vary_beyond_max_cv_is_too_noisy_and_says_which_cv_decided():
    def row(strategy, repeat, tokens, step_cv):
        return {"status": "ok", "strategy": strategy, "repeat_index": repeat, "tokens_per_s_per_device": tokens,
                "step_time_cv": step_cv, "config_json": json.dumps({"strategy": strategy}),
                "config_key": strategy}
    frame = pd.DataFrame([row("ddp", 0, 100.0, 0.295),                       # one run, steps vary 29.5%
                          row("zero1", 0, 90.0, 0.01), row("zero1", 1, 110.0, 0.01),  # repeats 14.1% apart
                          row("zero2", 0, 100.0, 0.02)])
    configs = analysis.aggregate_repeats(frame, max_cv=0.05).set_index("strategy")
    assert configs.noisy.to_dict() == {"ddp": True, "zero1": True, "zero2": False}
    assert configs.noisy_reason.to_dict() == {"ddp": "step CV 29.5%", "zero1": "repeat CV 14.1%", "zero2": ""}
    assert sections._noisy(True, "step CV 29.5%") == "YES: step CV 29.5%" and sections._noisy(False, "") == "no"


def test_compiled_reads_no_rather_than_blank(tmp_path):
    sweep = tmp_path / "sweep"
    write(sweep, "0_ddp", "ddp", compile=False)
    write(sweep, "1_zero1", "zero1", compile=True, steps=[0.06] * 10)
    md = report_sweep(sweep).markdown_path.read_text()
    details, rows = table_after(md, "### Details")
    assert [dict(zip(details, r))["compiled"] for r in rows] == ["no", "yes"]


def test_a_mib_figure_reads_one_way_throughout(tmp_path):
    sweep = tmp_path / "sweep"
    write(sweep, "0_ddp", "ddp")
    write(sweep, "1_zero1", "zero1", steps=[0.06] * 10)
    md = report_sweep(sweep).markdown_path.read_text()
    # 12,102.4 - 409.0 MiB of headroom and a 409.0 MiB peak: both with one decimal and a
    # thousands separator (tabulate wrote them back as 11693.4 and 409)
    header, [best] = table_after(md, "## Best configuration")
    assert [v for h, v in zip(header, best) if "headroom" in h] == ["11,693.4"]
    header, rows = table_after(md, "### tiny")
    assert {dict(zip(header, r))["peak memory (MiB)"] for r in rows} == {"409.0"}


def test_memory_rows_are_in_order_of_model_world_size_and_configuration():
    def config(model, strategy, world, optimizer):
        return dict(model=model, strategy=strategy, optimizer=optimizer, world_size=world, accelerator="cpu",
                    model_state_bytes_predicted=1.0, deepspeed_estimate_bytes=None, peak_memory_bytes=1.0,
                    memory_predicted_bytes=1.0, comm_bytes_per_step_json=None, comm_bytes_per_step_predicted=None)
    configs = pd.DataFrame([config("tiny", "zero2", 2, "sgd_momentum"), config("small", "ddp", 4, "adamw"),
                            config("tiny", "ddp", 2, "adamw"), config("tiny", "zero1", 2, "sgd_momentum"),
                            config("tiny", "zero1", 2, "adamw"), config("tiny", "ddp", 1, "sgd_momentum")])
    table = analysis.model_vs_measured(configs, [0.9, 4.0])
    assert table[["model", "world_size", "strategy", "configuration"]].values.tolist() == [
        ["small", 4, "ddp", "adamw"], ["tiny", 1, "ddp", "sgd_momentum"], ["tiny", 2, "ddp", "adamw"],
        ["tiny", 2, "zero1", "adamw"], ["tiny", 2, "zero1", "sgd_momentum"], ["tiny", 2, "zero2", "sgd_momentum"]]


# ---- 4. memory against the memory model's whole prediction -------------------------------------

def test_a_peak_of_activations_and_buffers_is_no_flag_when_the_memory_model_predicts_it():
    base = dict(model="m", strategy="zero2", optimizer="adamw", world_size=2, accelerator="cuda",
                model_state_bytes_predicted=100.0, deepspeed_estimate_bytes=None, comm_bytes_per_step_json=None,
                comm_bytes_per_step_predicted=None)
    configs = pd.DataFrame([
        # 6x the model states, 1.02x the whole prediction (activations, the reduce bucket): right
        {**base, "peak_memory_bytes": 612.0, "memory_predicted_bytes": 600.0},
        # half the prediction: the memory model over-predicts
        {**base, "strategy": "zero3", "peak_memory_bytes": 300.0, "memory_predicted_bytes": 600.0}])
    table = analysis.model_vs_measured(configs, [0.9, 4.0])
    assert table.memory_ratio.tolist() == pytest.approx([6.12, 3.0])   # shown, not judged
    assert table.flag.tolist() == ["", "peak 0.50x the memory model: it over-predicts"]


# ---- 5. communication like with like -----------------------------------------------------------

def test_the_loggers_messages_are_compared_with_the_model_on_the_wire_whatever_the_ranks():
    # ZeRO-2 as DeepSpeed 0.19.8 runs it (the default sweep's records with train.profile_comms):
    # the gradients all-reduced (the message: the whole buffer, G bytes) and the parameters
    # all-gathered (the message: the rank's shard, G/N). On the wire: 2(N-1)/N G + (N-1) G/N =
    # 3G(N-1)/N, 1.5x the model's 2G(N-1)/N on any N. The messages against the wire model gave
    # 1.5 on 2 ranks and 0.83 on 4.
    gradients = 678_912.0
    rows = []
    for n in (2, 4, 8):
        model = 2 * gradients * (n - 1) / n
        rows.append(dict(model="tiny", strategy="zero2", optimizer="adamw", world_size=n, data_parallel=n,
                         accelerator="cpu", model_state_bytes_predicted=1.0, deepspeed_estimate_bytes=None,
                         peak_memory_bytes=1.0, memory_predicted_bytes=1.0, comm_bytes_per_step_predicted=model,
                         comm_bytes_per_step_json=json.dumps({"all_reduce": gradients,
                                                              "all_gather_into_tensor": gradients / n})))
    table = analysis.model_vs_measured(pd.DataFrame(rows), [0.9, 4.0])
    assert table.comm_ratio.tolist() == pytest.approx([1.5, 1.5, 1.5])
    assert table.comm_message_bytes_logged.tolist() == pytest.approx([gradients * (1 + 1 / n) for n in (2, 4, 8)])
    # ZeRO-3 as the ZeRO paper has it: two all-gathers of the shard and a reduce-scatter of the
    # whole buffer are its 3G(N-1)/N exactly
    zero3 = dict(rows[1], strategy="zero3", comm_bytes_per_step_predicted=3 * gradients * 3 / 4,
                 comm_bytes_per_step_json=json.dumps({"all_gather_into_tensor": 2 * gradients / 4,
                                                      "reduce_scatter_tensor": gradients}))
    assert analysis.model_vs_measured(pd.DataFrame([zero3]), [0.9, 4.0]).comm_ratio[0] == pytest.approx(1.0)
    shown = sections.model_section(analysis.model_vs_measured(pd.DataFrame(rows), [0.9, 4.0])).tables[0][1]
    assert {"comm/step on the wire, model (MiB)", "comm/step, comms logger's messages (MiB)",
            "comm/step on the wire, from the logger (MiB)", "on the wire: logged/model"} <= set(shown.columns)


# ---- 6. parity against a ddp run of another global batch ---------------------------------------

def test_a_parity_run_without_a_ddp_run_of_its_batch_is_told_the_reference_and_the_override():
    def parity(strategy, zero, dp, tp, pp, sp, global_batch):
        return dict(status="ok", model="tiny", strategy=strategy, optimizer="adamw", precision="fp32",
                    check_parity=True, engine="deepspeed", zero_stage=zero, data_parallel=dp, tensor_parallel=tp,
                    pipeline_parallel=pp, sequence_parallel=sp, world_size=2, global_batch_size=global_batch,
                    offload_optimizer=False, activation_checkpointing="none", micro_batch_size=2,
                    loss_per_step_json=json.dumps([10.0, 9.0]), config_json="{}")
    # strategy=ddp,zero3,tp2,pp2,sp2 train.check_parity=true: micro-batch 2 on 2 data-parallel
    # ranks is a global batch of 4; one data-parallel rank makes it 2
    frame = pd.DataFrame([parity("ddp", 0, 2, 1, 1, 1, 4), parity("zero3", 3, 2, 1, 1, 1, 4),
                          parity("tp2", 0, 1, 2, 1, 1, 2), parity("pp2", 0, 1, 1, 2, 1, 2),
                          parity("sp2", 0, 1, 1, 1, 2, 2)])
    table = analysis.parity_table(frame).set_index("strategy")
    told = ("no comparable ddp run: ddp ran at global batch 4; this layout at 2: set train.global_batch_size=4")
    assert table.matches.to_dict() == {"ddp": "yes", "zero3": "yes", "tp2": told, "pp2": told, "sp2": told}
    # no plain data-parallel run at all: said as before
    assert set(analysis.parity_table(frame[frame.strategy != "ddp"]).matches) == {"no ddp run"}


# ---- 7. a record whose figures disagree with its step times ------------------------------------

def test_a_record_whose_stored_figure_disagrees_with_its_step_times_is_flagged_not_a_crash(tmp_path):
    sweep = tmp_path / "sweep"
    write(sweep, "0_ddp", "ddp")                         # 4 x 64 / 2 / 0.05 s = 2,560 tokens/s
    write(sweep, "1_zero1", "zero1", tokens=5_120.0)     # edited by hand: its steps give 2,560
    report = report_sweep(sweep)                         # the plot's error bar went negative here
    md = report.markdown_path.read_text()
    line = next(line for line in md.splitlines() if line.startswith("- warning: 1 record"))
    assert "sweep/1_zero1 (stored 5,120 tokens/s per device, its 10 step times give 2,560)" in line
    header, rows = table_after(md, "### tiny")
    shown = {r[0]: dict(zip(header, r)) for r in rows}
    assert shown["zero1"]["tokens/s/device"] == "5,120" and shown["zero1"]["95% interval"] == "—"
    assert shown["ddp"]["95% interval"] == "[2,560, 2,560]"
    assert (sweep / "report" / "throughput_tiny.png").exists()


def test_the_disagreement_check_passes_records_that_agree_and_names_those_that_cannot_give_a_rate():
    frame = pd.DataFrame([
        {"run_id": "a", "status": "ok", "step_times_json": json.dumps([0.5, 0.5]), "tokens_per_s_per_device": 64.0,
         "global_batch_size": 4.0, "seq_len": 16.0, "world_size": 2.0},     # 32 tokens per step / 0.5 s
        {"run_id": "b", "status": "ok", "step_times_json": json.dumps([0.0, 0.0]), "tokens_per_s_per_device": 64.0,
         "global_batch_size": 4.0, "seq_len": 16.0, "world_size": 2.0},
        {"run_id": "c", "status": "error", "step_times_json": json.dumps([9.0]), "tokens_per_s_per_device": 64.0,
         "global_batch_size": 4.0, "seq_len": 16.0, "world_size": 2.0}])
    found = analysis.step_time_disagreements(frame)
    assert found.run_id.tolist() == ["b"] and pd.isna(found.from_steps[0])


# ---- 8. stragglers: ranks compared with ranks that do the same work -----------------------------

def test_layouts_whose_ranks_differ_by_design_are_not_judged_and_the_report_says_why():
    def straggler_run(run_id, strategy, times, pp=1):
        ranks = {"hosts": ["a", "a"]}
        if times is not None:
            ranks["forward_time_s"] = times
        return {"run_id": run_id, "model": "tiny", "strategy": strategy, "world_size": 2, "workload": "train",
                "status": "ok", "step_time_cv": 0.01, "pipeline_parallel": pp, "per_rank_json": json.dumps(ranks)}
    frame = pd.DataFrame([
        straggler_run("dp", "ddp", [0.010, 0.020]),                 # a straggler: judged, flagged
        # the first stage holds the embedding, the last the loss: twice apart by design
        straggler_run("pp", "pp2", [0.010, 0.020], pp=2),
        straggler_run("old", "zero2", None)])                     # a record without forward times
    runs, _ = analysis.stragglers(frame, min_excess=0.30, noise_sigmas=3.0)
    assert runs.run_id.tolist() == ["dp"] and runs.flagged.tolist() == [True]
    excluded = analysis.straggler_exclusions(frame)
    assert excluded.run_id.tolist() == ["pp", "old"]
    assert excluded.reason[0] == analysis.PIPELINE_NOT_JUDGED
    from suite.config import ReportConfig

    text = " ".join(sections.stragglers_section(runs, pd.DataFrame(columns=["host", "runs", "flagged_runs", "slow"]),
                                                ReportConfig(), excluded).text)
    assert "Not judged (1 run: pp): pipeline stages do different work by design" in text
    assert "Not judged (1 run: old): no forward time per rank" in text


def test_a_nightly_of_hundreds_of_configurations_lists_only_what_changed():
    from suite.config import ReportConfig
    from suite.report.sections import LISTED_UNCHANGED, history_sections

    n = LISTED_UNCHANGED + 5
    regress = pd.DataFrame({"model": ["tiny"] * n, "strategy": [f"s{i}" for i in range(n)],
                            "optimizer": "adamw", "precision": "fp32", "world_size": 2.0,
                            "value": 100.0, "baseline": 100.0, "change": 0.0, "allowed_drop": 10.0,
                            "nights": 5.0, "verdict": ["regression", "improvement"] + ["unchanged"] * (n - 2),
                            "what_changed": ""})
    [section] = [s for s in history_sections(regress, {}, pd.DataFrame(), ReportConfig())
                 if s.title == "Regressions against history"]
    [(_, table)] = section.tables
    assert len(table) == 2  # the regression and the improvement
    assert f"{n - 2} configurations unchanged, not listed here" in " ".join(section.text)
    small = history_sections(regress.head(LISTED_UNCHANGED), {}, pd.DataFrame(), ReportConfig())
    assert len(small[0].tables[0][1]) == LISTED_UNCHANGED  # a small sweep lists every configuration
