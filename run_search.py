#!/usr/bin/env python
"""Hyperparameter search for autoencoder spill detection: ``python run_search.py --help``.

This file parses (the options are in cli_parser), dispatches and prints; a sweep's life is
sweeps.sweep.Sweep.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time

from cli_parser import build_parser, renamed_options
from sweeps.spec import REPO, SpecError, SweepSpec, configure_environment, ensure_dataset


# The project's packages report progress through module loggers; the CLI shows them as plain lines.
PROJECT_LOGGERS = ("anomaly_ae", "search_spaces", "trainables", "sweeps", "analysis", "benchmarks")


def say(line: str = "") -> None:
    print(line, flush=True)


def attach_console() -> None:
    """Show the project's INFO lines on stdout, bare, as the CLI's own output (the libraries' go to logs/)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def cmd_search(args) -> int:
    from sweeps.sweep import Sweep, route_library_logs

    spec = SweepSpec.from_namespace(args)
    log_path = route_library_logs(REPO / "logs" / f"search-{spec.experiment_name}.log")
    sweep = Sweep.resume(spec) if spec.resume else Sweep.create(spec)
    outcome = sweep.run()
    if outcome.interrupted:
        say(f"\ninterrupted: {outcome.trials_recorded} trial(s) recorded, {outcome.runs_closed} run(s) marked "
            f"KILLED. Resume with:\n  {spec.resume_command()}")
        return 130
    say("\n".join(outcome.summary_lines(spec.tracking_uri, log_path)))
    return 0


def cmd_list_models(args) -> int:
    from anomaly_ae.models import list_models, model_spec

    for name in list_models():
        spec = model_spec(name)
        kind = ("VAE" if spec.variational else "closed-form" if spec.closed_form else "AE" if not spec.synthetic
                else spec.training)
        params = ", ".join(f"{k}={v!r}" for k, v in spec.params.items())
        say(f"{name:<22} seed {spec.seed:<9} {kind:<15} {params}")
    return 0


def cmd_make_data(args) -> int:
    from anomaly_ae.data import make_dataset

    tick = time.perf_counter()
    if args.kind == "digits":
        from anomaly_ae.data.digits import make_digits_dataset

        counts = make_digits_dataset(args.out, seed=args.seed, overwrite=args.overwrite)
    elif args.kind.endswith("-shifted"):
        from anomaly_ae.data.shifted import make_shifted_dataset

        counts = make_shifted_dataset(args.kind, args.out, seed=args.seed, overwrite=args.overwrite)
    elif args.kind == "textures":
        from anomaly_ae.data.textures import make_textures

        counts = make_textures(args.out, seed=args.seed, overwrite=args.overwrite, texture=args.texture)
    else:
        counts = make_dataset(args.out, scale=args.scale, seed=args.seed, overwrite=args.overwrite)
    say(f"wrote {args.out}: {counts} in {time.perf_counter() - tick:.1f}s")
    return 0


def cmd_analyze(args) -> int:
    from mlflow.tracking import MlflowClient

    from analysis.report import REPORT_DIR, analyze

    report = analyze(MlflowClient(args.tracking_uri), args.experiment, args.parent, args.top, args.importance)
    say(report.markdown)
    say(f"logged {REPORT_DIR}/report.md and {len(report.figures)} PNGs to parent run {report.parent_run_id}")
    return 0


def cmd_promote(args) -> int:
    from mlflow.tracking import MlflowClient

    from sweeps.promote import PromotionRefused, promote, promotion_lines

    if (args.ensemble_distinct or args.ship == "ensemble") and not args.ensemble:
        raise SpecError("--ensemble-distinct and --ship ensemble need --ensemble K > 0")
    try:
        result = promote(MlflowClient(args.tracking_uri), args.tracking_uri, args.experiment, args.trial,
                         args.retrain_seeds if args.retrain else [], args.force, args.model_name, args.data, args.config_out,
                         args.parent, args.threshold_policy, not args.no_references, site_dir=args.site,
                         site_max_spill_fraction=args.site_max_spill_fraction, site_delta=args.site_delta,
                         site_review=args.site_review, site_calibration_share=args.site_calibration_share,
                         site_calibration=args.site_calibration,
                         ensemble=args.ensemble,
                         ensemble_distinct=args.ensemble_distinct, ship=args.ship)
    except PromotionRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 3
    say("\n".join(promotion_lines(result, args.threshold_policy, args.model_name)))
    return 0


def cmd_predict(args) -> int:
    from anomaly_ae.stats.drift import drift_lines
    from anomaly_ae.tracking.serving import predict_folder

    p = predict_folder(args.tracking_uri, args.model_name, args.model, args.images, args.out, args.threshold_policy,
                       args.site, args.site_max_spill_fraction, args.site_delta, args.site_review,
                       args.alarm_level)
    d = p.detector
    if p.recalibrated_on:
        say(f"recalibrated on {p.recalibrated_on['crops']} site crops from {args.site}: threshold "
            f"{d['threshold']:.6g} (TNR >= {d['tnr_target']} with probability {1 - p.recalibrated_on['delta']:g}, "
            f"spill bound {p.recalibrated_on['max_spill_fraction']:g})")
    say(f"wrote {args.out}: {len(p.frame)} crops, {int(p.frame['label'].sum())} flagged as spills "
        f"(score {d['score']} > threshold {d['threshold']:.6g}, policy {d['policy']})")
    for line in drift_lines(p.drift):
        print(line, file=sys.stderr if p.drift["alarm"] else sys.stdout)
    return 0


def cmd_benchmark_search(args) -> int:
    from mlflow.tracking import MlflowClient

    from benchmarks.search import SearchBenchmark, benchmark_search, summarize
    from sweeps.runs import experiments_with_prefix

    bench = SearchBenchmark(
        data=args.data, budget_s=args.budget_s, tracking_uri=args.tracking_uri, storage_path=args.storage_path,
        log_dir=args.log_dir, repeats=args.repeats, space=args.space, samplers=tuple(args.samplers),
        max_concurrent=args.max_concurrent, objective=args.objective, prefix=args.prefix, plot_out=args.plot_out)
    if args.summarize:
        client = MlflowClient(args.tracking_uri)
        names = sorted(experiments_with_prefix(client, args.summarize), key=lambda n: (int(n.rsplit("-", 1)[1]), n))
        return print_benchmark(summarize(client, bench, names, args.summarize.rsplit("-", 1)[-1]))
    if args.budget_s is None:
        raise SpecError("--budget-s: give the wall-clock seconds per sweep (or --summarize PREFIX)")
    bench = dataclasses.replace(bench, data=ensure_dataset(args.data))
    say(f"benchmark-search: {bench.repeats} x {'/'.join(bench.samplers)} sweeps of {bench.budget_s:.0f}s on "
        f"{bench.data} (space {bench.space}); each sweep's output in {bench.log_dir}")
    return print_benchmark(benchmark_search(bench))


def print_benchmark(table) -> int:
    from benchmarks.search import table_lines

    if table.empty:
        print("error: no sweep finished", file=sys.stderr)
        return 1
    say("\n".join(table_lines(table)))
    return 0


def cmd_benchmark(args) -> int:
    from benchmarks.throughput import benchmark, report_lines, timed_variants, write_tables

    variants = timed_variants(args.variants)
    epochs, options, packing = benchmark(ensure_dataset(args.data), variants, args.batch_sizes, args.crops,
                                         args.repeats, args.loader_workers, args.sweep_samples)
    say("\n".join(report_lines(epochs, options, packing, write_tables(args.out, epochs, options, packing))))
    return 0


def cmd_benchmark_knn(args) -> int:
    from benchmarks.knn import benchmark_knn

    table = benchmark_knn(args.sizes, args.queries)
    say(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.out is not None:
        table.to_csv(args.out, index=False)
    return 0


def cmd_benchmark_objectives(args) -> int:
    from mlflow.tracking import MlflowClient

    from benchmarks.objectives import objective_table, table_lines

    table = objective_table(MlflowClient(args.tracking_uri), args.experiment, args.data)
    say("\n".join(table_lines(table, args.experiment)))
    if args.out is not None:
        table.to_csv(args.out, index=False)
    return 0


def cmd_benchmark_families(args) -> int:
    from mlflow.tracking import MlflowClient

    import numpy as np
    import torch

    from benchmarks.families import SYNTHETIC_FAMILIES, epoch_costs, family_table, table_lines
    from sweeps.runs import find_parent_run, load_sweep_data

    client = MlflowClient(args.tracking_uri)
    table = family_table(client, args.experiment, args.data)
    costs = None
    if not args.no_costs:
        _, splits = load_sweep_data(find_parent_run(client, args.experiment), args.data)
        costs = epoch_costs(torch.from_numpy(np.ascontiguousarray(splits.train)), ["conv_ae", *SYNTHETIC_FAMILIES])
    say("\n".join(table_lines(table, costs, args.experiment)))
    if args.out is not None:
        table.to_csv(args.out, index=False)
    return 0


def cmd_simulate_review(args) -> int:
    from benchmarks.review import simulate_review

    counts = simulate_review(args.review, args.out, args.seed, args.scale, args.limit)
    say(f"wrote {args.out}: marked {counts['marked']} crops ({counts['spills']} spills) of {counts['listed']} listed")
    return 0


def cmd_server(args) -> int:
    from anomaly_ae.tracking.server import ServerConfigError, ServerSpec, prepare_server, startup_lines

    spec = ServerSpec(args.backend_store_uri, args.artifacts_destination, args.state_dir, args.host, args.port,
                      args.workers, args.concurrent_trials, args.allowed_hosts)
    try:
        command, env, pool, password = prepare_server(spec)
    except ServerConfigError as exc:
        raise SpecError(str(exc)) from exc
    say("\n".join(startup_lines(spec, pool, password)))
    os.execve(command[0], command, env)  # the server takes this process: signals reach it directly


def cmd_benchmark_tracking(args) -> int:
    from anomaly_ae.tracking.server import redact
    from benchmarks.tracking import benchmark_tracking, summary_table

    say(f"benchmark-tracking: {args.writers} writers x {args.epochs} epochs against {redact(args.tracking_uri)}")
    row = benchmark_tracking(args.tracking_uri, args.writers, args.epochs, args.timeout_s)
    table = summary_table(row)
    say(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    for error in row["first_errors"]:
        print(f"  error: {error}", file=sys.stderr)
    if args.out is not None:
        table.assign(tracking_uri=redact(args.tracking_uri)).to_csv(args.out, mode="a", index=False,
                                                                     header=not args.out.exists())
    return 0 if row["errors"] == 0 and row["exactly_once"] else 1


def cmd_calibrate(args) -> int:
    from benchmarks.calibrate import calibrate

    for row in calibrate(args.data, args.configs, args.epochs, args.threads, args.also_scores, args.invariance):
        say(json.dumps(row))
    return 0


def cmd_fidelity(args) -> int:
    from mlflow.tracking import MlflowClient

    from analysis.fidelity import pooled_fidelity
    from sweeps.runs import experiments_with_prefix

    client = MlflowClient(args.tracking_uri)
    names = experiments_with_prefix(client, args.prefix)
    table, n = pooled_fidelity(client, names)
    say(f"{n} sweeps: {', '.join(names)}")
    say(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


COMMANDS = {"search": cmd_search, "make-data": cmd_make_data, "list-models": cmd_list_models,
            "analyze": cmd_analyze, "promote": cmd_promote, "predict": cmd_predict,
            "benchmark-search": cmd_benchmark_search, "benchmark": cmd_benchmark, "benchmark-knn": cmd_benchmark_knn,
            "server": cmd_server, "benchmark-tracking": cmd_benchmark_tracking, "calibrate": cmd_calibrate,
            "fidelity": cmd_fidelity, "benchmark-objectives": cmd_benchmark_objectives,
            "benchmark-families": cmd_benchmark_families,
            "simulate-review": cmd_simulate_review}


def tracking_line(uri: str, argv: list[str]) -> str:
    """Where a command's runs go, said first: a URI left in the shell would otherwise send them elsewhere
    unannounced."""
    from anomaly_ae.tracking.server import redact

    source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") == uri else (
        "--tracking-uri" if any(a.startswith("--tracking-uri") for a in argv) else "the default")
    return f"tracking: {redact(uri)} (from {source})"


def main(argv: list[str] | None = None) -> int:
    configure_environment()
    attach_console()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["search", *argv]
    argv, notes = renamed_options(argv)
    for note in notes:
        print(note, file=sys.stderr)
    args = build_parser().parse_args(argv)
    if getattr(args, "tracking_uri", None):
        say(tracking_line(args.tracking_uri, argv))
        if args.command != "search":  # search names its log after the experiment
            from sweeps.sweep import route_library_logs

            route_library_logs(REPO / "logs" / f"{args.command}.log")
    try:
        return COMMANDS[args.command](args)
    except (SpecError, FileExistsError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001
        from anomaly_ae.detector.checkpoints import UntrustedCheckpoint
        from anomaly_ae.data import DatasetError
        from anomaly_ae.tracking.serving import PredictionError
        from anomaly_ae.stats.thresholds import SitePoolTooSmall
        from sweeps.runs import SweepNotFound

        if isinstance(exc, (DatasetError, SweepNotFound, UntrustedCheckpoint, SitePoolTooSmall, PredictionError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
