"""`isoflop fit`, `isoflop size`, `isoflop predict` and `isoflop report`: `register(subparsers)` adds them to
the console script (docs/ANALYSIS.md, docs/ANALYSIS-REPRODUCING.md).

Bad input (a missing column, a non-positive or non-finite value, an empty source or selection, an
unknown option value, an output path that cannot be a directory) prints one line on stderr and returns
exit code 2, before anything is computed or written.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys

from analysis.errors import AnalysisError
from analysis.bootstrap import RESAMPLING
from analysis.fits import (DEFAULT_LBFGS_STARTS, DEFAULT_OBJECTIVES, FIT_APPROACHES, FitOptions, check_approach,
                           check_resampling, run_fit)
from analysis.presets import PRESETS, chinchilla_form, predict, read_law
from analysis.results import fmt, samples_csv
from analysis.robust import OBJECTIVES, objective_named
from analysis.select import parse_group_by, parse_where, repeated_sizes, select, split
from analysis.conditional import CostModel, SearchSpace, measured_cost_model
from analysis.conditional import read_law as read_conditional_law
from analysis.sizing import BASELINE_SHAPE, architecture_target, compute_optimal_tokens, size, size_architecture
from analysis.sources import (
    DEFAULT_BUDGET_RTOL, FLOPS_CONVENTIONS, LOSS_CHOICES, PARAMS_CONVENTIONS, Conventions, exclude_outliers,
    load_source,
)
from common.files import WriteError, atomic_write
from common.validation import (
    finite_float, non_negative_float, non_negative_int, one_line_parser_errors, output_directory, output_file,
    positive_float, positive_int,
)


def register(subparsers) -> None:
    fit = _add(subparsers, "fit", "fit a scaling law to run directories or a CSV, with bootstrap intervals", _fit)
    _add_source_options(fit)
    fit.add_argument("--approach", default="3",
                     help=f"which fit: {', '.join(FIT_APPROACHES)} (default 3: Hoffmann et al.'s parametric L(N, D); "
                          "frontier: a table of optima, one row per budget)")
    fit.add_argument("--sigma-col", metavar="COL",
                     help="--approach frontier: weight each optimum 1/σ², σ the standard deviation of its ln N* "
                          "held in this column")
    fit.add_argument("--json", action="store_true", help="print the result as JSON (feed approach 3's to `size --law`)")
    fit.add_argument("--save-samples", metavar="FILE",
                     help="write the bootstrap draws as CSV: one row per fitted resample, one column per estimate "
                          "(with --group-by, the group's columns first)")

    sizing = _add(subparsers, "size", "inference-aware sizing (Sardana & Frankle 2023) from a fitted L(N, D)", _size)
    sizing.add_argument("--law", required=True,
                        help="FIT.json from `isoflop fit --approach 3 --json` (or law.json from a report), "
                             f"or a published law: {', '.join(PRESETS)}; with --architecture, "
                             "`isoflop fit --approach conditional --json` (or a report's fits.json)")
    sizing.add_argument("--inference-tokens", type=non_negative_float, required=True,
                        help="lifetime inference tokens D_inf")
    target = sizing.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-loss", type=positive_float,
                        help="the loss the model must reach (above the law's irreducible loss E)")
    target.add_argument("--budget", type=positive_float,
                        help="a training budget in FLOPs: the target is the Chinchilla-optimal loss at that budget")
    target.add_argument("--target-params", type=positive_float, metavar="N",
                        help="the target is the loss of a compute-optimal N-parameter model under the law "
                             "(Sardana & Frankle: 'the quality of a Chinchilla-optimal 13B model')")
    sizing.add_argument("--json", action="store_true", help="print the result as JSON")
    shape = sizing.add_argument_group(
        "architecture (docs/ANALYSIS-CONDITIONAL.md): with --architecture the cost is seconds of one device, "
        "training plus serving, of a modelled device unless --measured")
    shape.add_argument("--architecture", action="store_true",
                       help="choose d_model, layers, r and KV heads too, with an architecture-conditional law "
                            "(--law from `isoflop fit RUNS --approach conditional --json`, or a report's fits.json)")
    shape.add_argument("--measured", metavar="RUNS",
                       help="take the device from these run directories: `isoflop bench infer` results and the "
                            "runs' training throughput")
    shape.add_argument("--serve-batch", type=positive_int, help=f"sequences decoded together (default {CostModel.batch})")
    shape.add_argument("--serve-context", type=positive_int,
                       help=f"tokens of context a decoded token attends to (default {CostModel.context})")
    shape.add_argument("--bandwidth", type=positive_float,
                       help=f"modelled device: memory bandwidth in bytes/s (default {CostModel.bandwidth:g})")
    shape.add_argument("--peak-flops", type=positive_float,
                       help=f"modelled device: peak FLOP/s (default {CostModel.peak_flops:g})")
    shape.add_argument("--train-mfu", type=mfu_fraction,
                       help=f"modelled device: training FLOP/s as a fraction of the peak (default "
                            f"{CostModel.train_flops_per_second / CostModel.peak_flops:g})")
    shape.add_argument("--max-heads-per-kv", type=positive_int, metavar="K",
                       help="at most K query heads per KV head (the law has no GQA term; default: no cap)")

    predicting = _add(subparsers, "predict", "the loss a published or fitted scaling law predicts", _predict)
    predicting.add_argument("--law", required=True,
                            help=f"a published law ({', '.join(PRESETS)}) or FIT.json from `isoflop fit --json` "
                                 "(approach 3 or datacon)")
    for flag, meaning in (("--params", "parameters N"), ("--tokens", "training tokens D"),
                          ("--unique-tokens", "unique tokens U (data-constrained laws; default: D, no repetition)"),
                          ("--flops", "training FLOPs C (with one of N, D: C = 6ND; alone: the compute-optimal model)")):
        predicting.add_argument(flag, type=positive_float, help=meaning)
    predicting.add_argument("--json", action="store_true", help="print {\"loss\": ...} and what it used as JSON")

    ladder = _add(subparsers, "ladder", "the exponent a at each step of a ladder of grids, each fitted in its own "
                  "FLOP count (Porian et al. 2024, Figure 1)", _ladder)
    ladder.add_argument("--step", nargs=3, action="append", required=True, metavar=("LABEL", "DIR", "FLOPS"),
                        help=f"one step: its label, its run directories, the count its budgets were spent under "
                             f"({', '.join(FLOPS_CONVENTIONS)}); repeat in ladder order")
    ladder.add_argument("--params", default="non_embedding",
                        help=f"parameter count: {', '.join(PARAMS_CONVENTIONS)} (default non_embedding)")
    ladder.add_argument("--approach3", action="store_true", help="fit approach 3 at every step as well")
    ladder.add_argument("--bootstrap", type=non_negative_int, default=1000, metavar="N",
                        help="bootstrap resamples per fit (default 1000)")
    ladder.add_argument("--seed", type=non_negative_int, default=0, help="bootstrap seed, >= 0 (default 0)")
    _add_resample_option(ladder)
    ladder.add_argument("-o", "--output", required=True, help="directory for ladder.md, ladder.json and ladder.png")

    report = _add(subparsers, "report", "every fit, PNG plots and report.md for run directories or a CSV", _report)
    _add_source_options(report)
    report.add_argument("-o", "--output", required=True, help="directory for report.md, the figures and fits.json")


def _add(subparsers, name: str, help_text: str, handler) -> argparse.ArgumentParser:
    parser = one_line_parser_errors(subparsers.add_parser(name, help=help_text, description=help_text),
                                    f"isoflop {name}")
    parser.set_defaults(func=_one_line_errors(name, handler), parser=parser)
    return parser


def reproduce_command(args) -> str:
    """The command line that re-creates this run: the positional source and every option that differs
    from its default, read off the parser itself, so that no option can be forgotten."""
    parts = ["isoflop", args.command]
    for action in args.parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest == "lbfgs_starts" and value is None:
            value = "all"  # what --lbfgs-starts all parses to
        if action.dest in ("help", "func", "parser") or value is None or value == action.default:
            continue
        if not action.option_strings:
            parts += [str(item) for item in value] if isinstance(value, list) else [str(value)]
        elif action.nargs == 0:  # store_true
            parts.append(action.option_strings[-1])
        elif isinstance(value, list):  # append
            for item in value:
                parts += [action.option_strings[-1], str(item)]
        else:
            parts += [action.option_strings[-1], str(value)]
    return " ".join(shlex.quote(part) for part in parts)


def _one_line_errors(name: str, handler):
    def run(args) -> int:
        try:
            return handler(args)
        except (AnalysisError, WriteError) as err:
            print(f"isoflop {name}: {err}", file=sys.stderr)
            return 2

    return run


def _add_resample_option(parser) -> None:
    parser.add_argument("--resample", choices=RESAMPLING, default="runs",
                        help="what each bootstrap draw resamples: runs (rows, within each budget where the approach "
                             "groups by budget; default) or residuals (approach 2: the fixed design of an isoFLOP grid "
                             "keeps its sizes and each budget's parabola gets back its own residuals, drawn with "
                             "replacement; Davison & Hinkley 1997, algorithm 6.3)")


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="+", help="a directory of run directories (any depth, **/summary.json; "
                        "several read as one source) or a CSV file")
    group = parser.add_argument_group("conventions (stated in every output; for a CSV, unless named here, "
                                      "whatever its columns hold)")
    group.add_argument("--params", help=f"parameter count: {', '.join(PARAMS_CONVENTIONS)} (default non_embedding)")
    group.add_argument("--flops", help=f"FLOP count: {', '.join(FLOPS_CONVENTIONS)} (default 6N)")
    group.add_argument("--loss", help=f"which final loss of a run: {', '.join(LOSS_CHOICES)} (default eval)")
    group = parser.add_argument_group("CSV columns (defaults: params, tokens, flops, loss; any two of the first three)")
    for role in ("params", "tokens", "flops", "loss"):
        group.add_argument(f"--{role}-col", help=f"column holding {role}")
    group.add_argument("--budget-rtol", type=positive_float, default=DEFAULT_BUDGET_RTOL,
                       help="CSV rows whose FLOPs differ by less than this share an iso-FLOP budget (default 0.05)")
    group.add_argument("--skip-blank", action="store_true",
                       help="leave out CSV rows with an empty cell in a column the fit reads (listed in the notes)")
    group = parser.add_argument_group("selecting rows")
    group.add_argument("--where", action="append", default=[], metavar="EXPR",
                       help="keep rows where COLUMN OP VALUE holds, OP one of = != < <= > >= (numeric when both "
                            "sides are numbers); repeatable, all must hold")
    group.add_argument("--group-by", metavar="COL[,COL]",
                       help="one fit per distinct value of these columns (JSON: {\"groups\": [{\"key\", \"result\"}]})")
    group = parser.add_argument_group("outlier exclusion (each dropped row is listed in the output)")
    group.add_argument("--drop-highest", type=non_negative_int, default=0, metavar="K",
                       help="drop the K highest losses")
    group.add_argument("--max-loss", type=positive_float, help="drop runs with a loss above this")
    group.add_argument("--drop-run", action="append", default=[], metavar="RUN_ID", help="drop this run (repeatable)")
    group = parser.add_argument_group("fitting")
    group.add_argument("--bootstrap", type=non_negative_int, default=1000, metavar="N",
                       help="bootstrap resamples (default 1000; 0: none)")
    group.add_argument("--seed", type=non_negative_int, default=0, help="bootstrap seed, >= 0 (default 0)")
    _add_resample_option(group)
    group.add_argument("--ci", type=ci_level, default=95.0, metavar="LEVEL",
                       help="percent of the bootstrap draws each interval holds, 0 < LEVEL < 100 (default 95; "
                            "80 gives the 10-90%% range)")
    group.add_argument("--lbfgs-starts", type=lbfgs_starts, default=DEFAULT_LBFGS_STARTS,
                       help="L-BFGS runs from this many of Hoffmann et al.'s 4,500 initialisations, the best by "
                            f"initial objective, or 'all' (default {DEFAULT_LBFGS_STARTS})")
    group.add_argument("--window", type=parabola_window, metavar="K",
                       help="approach 2: fit each budget's parabola to the K runs centred (in log N order) on its "
                            "lowest loss, as the papers do on wide grids (K >= 3; default: every run)")
    group.add_argument("--objective", metavar="NAME",
                       help=f"what approaches 3, overtrain and datacon minimise: {', '.join(OBJECTIVES)} "
                            "(default: each paper's own: huber-log for 3 and datacon, lsq for overtrain)")
    group.add_argument("--at-flops", type=positive_float,
                       help="over-training: compute at which the loss given up is reported (default: largest budget)")


def lbfgs_starts(text: str) -> int | None:
    """argparse type of --lbfgs-starts: a positive count, or 'all' (None: every start)."""
    if text == "all":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'all' (got {text!r})") from None


def ci_level(text: str) -> float:
    """argparse type of --ci: a percentage strictly between 0 and 100."""
    value = finite_float(text)
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"must be a percentage between 0 and 100, exclusive (got {text!r})")
    return value


def mfu_fraction(text: str) -> float:
    """argparse type of --train-mfu: a fraction of the peak, 0 < MFU <= 1."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a fraction of the peak, 0 < MFU <= 1 (got {text!r})")
    return value


def parabola_window(text: str) -> int:
    """argparse type of --window: a parabola needs three points."""
    value = positive_int(text)
    if value < 3:
        raise argparse.ArgumentTypeError(f"must be an integer >= 3: a parabola needs three points (got {text!r})")
    return value


def _load(args, with_curves: bool = False, need_loss: bool = True) -> list[tuple[dict, object]]:
    """The source's rows, selected by --where, outliers excluded, split by --group-by: [(key, Dataset)]."""
    conditions = [parse_where(text) for text in args.where]  # a malformed one fails before any reading
    group_names = parse_group_by(args.group_by)
    conventions = _conventions(args)
    columns = {role: getattr(args, f"{role}_col") for role in ("params", "tokens", "flops", "loss")}
    data = load_source(args.source, conventions, columns, with_curves=with_curves,
                       budget_rtol=args.budget_rtol, skip_blank=args.skip_blank, need_loss=need_loss)
    data = select(data, conditions)
    data = exclude_outliers(data, drop_highest=args.drop_highest, max_loss=args.max_loss, drop_runs=args.drop_run)
    return split(data, group_names)


def _conventions(args) -> Conventions:
    """The conventions named on the command line, the defaults for the rest (`named` says which is which)."""
    given = {role: getattr(args, role) for role in ("params", "flops", "loss") if getattr(args, role) is not None}
    return Conventions(**given, named=frozenset(given))


def _warn_repeated_sizes(args, groups) -> None:
    """Once per group, on stderr: repeated model sizes in a budget (a sign of pooled groups). Called after
    the fits succeed, so that a failure stays one line."""
    for key, group in groups:
        warning = repeated_sizes(group)
        if warning:
            label = ", ".join(f"{name}={value}" for name, value in key.items())
            print(f"isoflop {args.command}: {warning}" + (f" [group {label}]" if label else ""), file=sys.stderr)


def _options(args) -> FitOptions:
    return FitOptions(sigma_col=getattr(args, "sigma_col", None), ci_level=args.ci, n_resamples=args.bootstrap, seed=args.seed, progress=True, lbfgs_starts=args.lbfgs_starts,
                      reference_flops=args.at_flops, window=args.window, objective=args.objective,
                      resample=args.resample)


def _fit(args) -> int:
    check_approach(args.approach)
    if args.window is not None and args.approach != "2":
        raise AnalysisError(f"--window applies to approach 2 only (got --approach {args.approach})")
    check_resampling(args.approach, args.resample)
    if args.objective is not None:
        objective_named(args.objective)
        if args.approach not in DEFAULT_OBJECTIVES:
            raise AnalysisError(f"--objective applies to approaches {', '.join(DEFAULT_OBJECTIVES)} "
                                f"(got --approach {args.approach})")
    options = _options(args)
    if args.sigma_col is not None and args.approach != "frontier":
        raise AnalysisError(f"--sigma-col applies to --approach frontier only (got --approach {args.approach})")
    if args.save_samples is not None:
        problems = output_file("--save-samples", args.save_samples)  # before any fit, so nothing is wasted
        if problems:
            raise AnalysisError(problems[0])
        if args.bootstrap == 0:
            raise AnalysisError("--save-samples needs bootstrap resamples (got --bootstrap 0)")
    groups = _load(args, need_loss=args.approach != "frontier")  # a table of optima may have no losses
    results = [(key, run_fit(data, args.approach, options)) for key, data in groups]
    _warn_repeated_sizes(args, groups)
    if args.save_samples is not None:
        atomic_write(args.save_samples, samples_csv(results))
    if args.group_by is None:
        (_, result), = results
        print(result.to_json() if args.json else result.table())
    elif args.json:
        print(json.dumps({"groups": [{"key": key, "result": result.as_dict()} for key, result in results]}, indent=2))
    else:
        print("\n\n".join(f"== group {', '.join(f'{name}={value}' for name, value in key.items())} ==\n{result.table()}"
                          for key, result in results))
    return 0


def _report(args) -> int:
    from analysis.report import build_report  # matplotlib only when a report is asked for

    problems = output_directory("-o/--output", args.output)  # before any fit, so nothing is wasted
    if problems:
        raise AnalysisError(problems[0])
    options = _options(args)
    if args.group_by is not None:
        raise AnalysisError("--group-by: a report covers one group; select it with --where instead")
    if args.objective is not None:
        objective_named(args.objective)
    groups = _load(args, with_curves=True)
    (_, data), = groups
    path = build_report(data, args.output, options, command=reproduce_command(args))
    _warn_repeated_sizes(args, groups)
    print(f"wrote {path} ({len(list(pathlib.Path(args.output).glob('*.png')))} figures)")
    return 0


def _ladder(args) -> int:
    from analysis.ladder import Step, fit_steps, table, write_ladder

    problems = output_directory("-o/--output", args.output)  # before any fit, so nothing is wasted
    if problems:
        raise AnalysisError(problems[0])
    steps = [Step(label, source, flops) for label, source, flops in args.step]
    options = FitOptions(n_resamples=args.bootstrap, seed=args.seed, progress=True, resample=args.resample)
    fits = fit_steps(steps, args.params, options, approach3=args.approach3)
    command = " ".join(["isoflop ladder"] + [f"--step {shlex.quote(s.label)} {shlex.quote(s.source)} {s.flops}"
                                             for s in steps]
                       + (["--approach3"] if args.approach3 else [])
                       + ([f"--resample {args.resample}"] if args.resample != "runs" else [])
                       + [f"-o {shlex.quote(args.output)}"])
    path = write_ladder(fits, args.output, command)
    print(table(fits))
    print(f"wrote {path}")
    return 0


def _predict(args) -> int:
    law, origin = read_law(args.law)
    loss, inputs, formula = predict(law, args.params, args.tokens, args.unique_tokens, args.flops)
    if args.json:
        print(json.dumps({"loss": loss, "inputs": inputs, "formula": formula, "law": law.as_dict(),
                          "law_source": origin}, indent=2))
        return 0
    shown = ", ".join(f"{key}={fmt(value)}" for key, value in inputs.items())
    print(f"L = {loss:.6g}\n  {formula}\n  at {shown}\n  law: {origin}")
    return 0


ARCHITECTURE_OPTIONS = (("--measured", "measured"), ("--serve-batch", "serve_batch"), ("--serve-context", "serve_context"),
                        ("--bandwidth", "bandwidth"), ("--peak-flops", "peak_flops"), ("--train-mfu", "train_mfu"),
                        ("--max-heads-per-kv", "max_heads_per_kv"))


def _size(args) -> int:
    if args.architecture:
        return _size_architecture(args)
    given = [flag for flag, dest in ARCHITECTURE_OPTIONS if getattr(args, dest) is not None]
    if given:
        raise AnalysisError(f"{given[0]} applies with --architecture only")
    law, origin = read_law(args.law)
    law, restriction = chinchilla_form(law, args.law)
    origin += restriction
    target_loss = args.target_loss
    if args.target_params is not None:
        target_loss = float(law.loss(args.target_params, compute_optimal_tokens(law, args.target_params)))
    result = size(law, args.inference_tokens, target_loss=target_loss, budget_flops=args.budget)
    if args.json:
        print(json.dumps({**result.as_dict(), "law": law.as_dict(), "law_source": origin}, indent=2))
        return 0
    target = f"L = {result.target_loss:.4f}"
    if args.budget is not None:
        target += f" (the Chinchilla-optimal loss at a {fmt(args.budget)}-FLOP training budget)"
    if args.target_params is not None:
        target += (f" (the loss of a compute-optimal {fmt(args.target_params)}-parameter model, trained on "
                   f"{fmt(compute_optimal_tokens(law, args.target_params))} tokens)")
    lines = [
        "Inference-aware sizing (Sardana & Frankle 2023): minimise 6·N·D + 2·N·D_inf subject to L(N, D) = target",
        f"law: L(N, D) = {law.E:.4g} + {law.A:.4g}/N^{law.alpha:.4g} + {law.B:.4g}/D^{law.beta:.4g} from {origin}",
        f"target: {target}; lifetime inference tokens D_inf = {fmt(args.inference_tokens)}",
        f"  {'':<20} {'params N':>10} {'tokens D':>10} {'D/N':>7} {'train FLOPs':>12} {'infer FLOPs':>12} {'total FLOPs':>12}",
    ]
    for label, plan in (("Chinchilla-optimal", result.chinchilla), ("inference-optimal", result.inference_optimal)):
        lines.append(
            f"  {label:<20} {fmt(plan.params):>10} {fmt(plan.tokens):>10} {plan.tokens_per_param:>7.1f} "
            f"{fmt(plan.train_flops):>12} {fmt(plan.inference_flops):>12} {fmt(plan.total_flops):>12}"
        )
    saved = result.as_dict()["flops_saved_fraction"]
    lines.append(
        f"over-training ratio: {result.overtrain_ratio:.2f}x the Chinchilla-optimal tokens per parameter "
        f"({result.inference_optimal.params / result.chinchilla.params:.2f}x the parameters); "
        f"FLOPs saved: {fmt(result.flops_saved)} ({100 * saved:.1f}% of the Chinchilla-optimal lifetime total)"
    )
    print("\n".join(lines))
    return 0


def _size_architecture(args) -> int:
    """`size --architecture`: every input checked (law, device, target) before the search runs."""
    if args.law in PRESETS:
        raise AnalysisError(f"--law {args.law}: a published L(N, D) has no architecture terms; --architecture needs "
                            "`isoflop fit RUNS --approach conditional --json`")
    law, origin = read_conditional_law(args.law)
    batch, context = args.serve_batch or CostModel.batch, args.serve_context or CostModel.context
    if args.measured is not None:
        modelled = [flag for flag, dest in ARCHITECTURE_OPTIONS[3:6] if getattr(args, dest) is not None]
        if modelled:
            raise AnalysisError(f"{modelled[0]} describes the modelled device; with --measured the device is the runs'")
        cost, device = measured_cost_model(args.measured, batch, context)
    else:
        peak = args.peak_flops or CostModel.peak_flops
        mfu = args.train_mfu or CostModel.train_flops_per_second / CostModel.peak_flops
        cost = CostModel(batch=batch, context=context, bandwidth=args.bandwidth or CostModel.bandwidth, peak_flops=peak,
                         train_flops_per_second=mfu * peak)
        device = (f"a modelled device ({fmt(cost.bandwidth)} bytes/s, {fmt(peak)} FLOP/s peak; nominal unless set: read "
                  f"ratios): training at {mfu:.0%} MFU, decoding at the roofline bound")
    target_loss, what = architecture_target(law, args.target_loss, args.budget, args.target_params)
    result = size_architecture(law, args.inference_tokens, target_loss, cost,
                               SearchSpace(max_heads_per_kv=args.max_heads_per_kv), what)
    assumptions = [
        f"cost: seconds of one device ({device})",
        f"training: 6·N·D FLOPs at {fmt(cost.train_flops_per_second)} FLOP/s; serving: D_inf decoded tokens at the "
        f"architecture's decode tokens/s, a roofline step at batch {cost.batch}, context {cost.context}, "
        f"{cost.bytes_per_element:g}-byte weights and KV cache (prefill not counted)",
        f"baseline: LLaMA-style (d/√N {BASELINE_SHAPE[0]}, r {BASELINE_SHAPE[1]:g}, {BASELINE_SHAPE[2]} query heads per KV "
        "head) at the N, D of least training cost for the target (Chinchilla-optimal); 'sized': that shape at the N, "
        "D of least lifetime cost",
    ]
    if args.max_heads_per_kv is None:
        assumptions.append("the law has no GQA term, so n_kv_heads is chosen for decode speed alone (up to one KV "
                           "head); cap it with --max-heads-per-kv")
    if args.json:
        print(json.dumps({**result.as_dict(), "law": law.as_dict(), "law_source": origin, "assumptions": assumptions},
                         indent=2))
        return 0
    lines = [
        "Architecture-aware sizing (Bian et al. 2025 law, Sardana & Frankle 2023 lifetime): minimise training + "
        "serving time subject to L(N, D, d/√N, r) = target",
        f"law: L = ({law.E:.4g} + {law.A:.4g}/N^{law.alpha:.4g} + {law.B:.4g}/D^{law.beta:.4g}) · shape factor "
        f"(optimum d/√N = {law.width_opt:.4g}, r = {law.ratio_opt:.4g}; curvatures {law.c_width:.3g}, {law.c_ratio:.3g}) "
        f"from {origin}",
        f"target: L = {result.target_loss:.4f}{what}; lifetime inference tokens D_inf = {fmt(args.inference_tokens)}",
        f"  {'':<19} {'params N':>9} {'tokens D':>9} {'D/N':>6} {'d_model':>7} {'layers':>6} {'heads':>5} {'kv':>3} "
        f"{'d_ff':>6} {'r':>5} {'d/√N':>6} {'loss':>7} {'decode/s':>9} {'train h':>9} {'serve h':>9} {'total h':>9}",
    ]
    rows = (("LLaMA-style", result.baseline), ("LLaMA-style, sized", result.baseline_lifetime),
            ("recommended", result.recommended))
    for label, plan in rows:
        arch = plan.arch
        lines.append(
            f"  {label:<19} {fmt(arch.params):>9} {fmt(plan.tokens):>9} {plan.tokens / arch.params:>6.1f} {arch.d_model:>7} "
            f"{arch.n_layers:>6} {arch.n_heads:>5} {arch.n_kv_heads:>3} {arch.d_ff:>6} {arch.ratio:>5.2f} "
            f"{arch.d_model / arch.params ** 0.5:>6.3f} {plan.loss:>7.4f} {fmt(plan.tokens_per_second):>9} "
            f"{fmt(plan.train_seconds / 3600):>9} {fmt(plan.inference_seconds / 3600):>9} {fmt(plan.total_seconds / 3600):>9}")
    base = result.baseline.total_seconds
    lines.append(f"saving: {fmt(result.saving_seconds / 3600)} device-hours, {100 * result.saving_seconds / base:.1f}% of "
                 "the LLaMA-style Chinchilla-optimal lifetime total (sizing N and D alone, at the LLaMA-style shape: "
                 f"{100 * (1 - result.baseline_lifetime.total_seconds / base):.1f}%)")
    lines += [f"note: {line}" for line in assumptions]
    print("\n".join(lines))
    return 0
