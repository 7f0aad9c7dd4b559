"""`steadylm attack`: a universal adversarial trigger (UAT or layerwise LUAT) against a classifier."""

from __future__ import annotations

import argparse
import dataclasses

from steadylm.attack.config import METHODS, AttackConfig, help_of

HELP = """\
Search a universal trigger (a few tokens put before every input) that changes a classifier's
predictions, on the task's training split, and score it on the test split:

  uat   HotFlip candidates along the averaged loss gradient (Wallace et al. 2019)
  luat  HotFlip candidates along the (p,q)-singular vector of a hidden layer's Jacobian
        (layerwise; the layer by --layer, or the best on a selection set)

DIR gets attack.json (trigger, fooling rate, the "the the the" baseline, transfer, the per-layer
singular values), sensitivity.png, config.toml, provenance.json and status.json. With
--profile-only, only the per-layer singular values (profile.json), also for a pre-trained
steadylm language model.
See docs/attack.md."""

# Options that argparse handles apart from the loop over the dataclass.
_SPECIAL = {"classifier", "method", "transfer", "reuse", "profile", "profile_only"}
_METAVARS = {"task": "NAME", "select_task": "NAME", "eval_task": "NAME", "layer": "N|auto",
             "target_label": "LABEL", "device": "DEVICE"}  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack",
        help="universal adversarial triggers: UAT and layerwise LUAT, with transfer",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = AttackConfig()
    # Every flag defaults to None, so that only the flags given override --config and --set.
    p.add_argument("classifier", nargs="?", metavar="CLASSIFIER", help=help_of("classifier"))
    p.add_argument("--method", metavar="|".join(METHODS),
                   help=f"{help_of('method')} (default {d.method})")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to create (empty)")
    for f in dataclasses.fields(AttackConfig):
        if f.name in _SPECIAL:
            continue
        default = getattr(d, f.name)
        typ = float if isinstance(default, float) else int if isinstance(default, int) else str
        shown = (
            f" (default {default})" if default != "" and "default" not in help_of(f.name) else ""
        )
        p.add_argument(f"--{f.name.replace('_', '-')}", type=typ,
                       metavar=_METAVARS.get(f.name, "N" if typ is int else f.name.upper()),
                       help=help_of(f.name) + shown)  # fmt: skip
    p.add_argument("--transfer", nargs="+", metavar="RUN", help=help_of("transfer"))
    p.add_argument("--reuse", nargs="+", metavar="DIR", help=help_of("reuse"))
    p.add_argument("--no-profile", dest="profile", action="store_const", const=False,
                   help="skip the per-layer sensitivity profile")  # fmt: skip
    p.add_argument("--profile-only", action="store_const", const=True,
                   help=help_of("profile_only"))  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="a TOML file with an [attack] table")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="attack.KEY=VALUE",
                   help="override one option, e.g. --set attack.iters=5 (repeatable; TOML values)")  # fmt: skip
    p.add_argument("--resume", action="store_true",
                   help="start over in --out when it holds an unfinished attack (what `steadylm "
                        "sweep` asks for; an attack keeps no checkpoints)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadylm.attack.config import load_attack_config
    from steadylm.attack.job import AttackJob
    from steadylm.config import toml_value

    flags = [
        f"attack.{f.name}={toml_value(getattr(args, f.name))}"
        for f in dataclasses.fields(AttackConfig)
        if getattr(args, f.name, None) is not None
    ]
    cfg = load_attack_config(args.config, [*args.overrides, *flags])
    result = AttackJob(cfg, args.out, progress=not args.no_progress, resume=args.resume).run()
    print(summary(result, args.out))
    return 0


def summary(r: dict, out: str) -> str:
    profile = [
        f"layer {row['layer']:>3}   singular value {row['singular_value']:.4g}"
        for row in r["sensitivity"]
    ]
    if r["method"] == "profile":
        return "\n".join([*profile, f"run         {out}   (profile.json)"])
    layer = f"   layer {r['layer']}" if r["layer"] is not None else ""
    lines = [
        f"method      {r['method']}{layer}   trigger {r['trigger_text']!r}",
        f"fooling     {r['fooling_rate']:.3f} of {r['n_eval']} test inputs   "
        f"baseline {r['baseline_fooling_rate']:.3f} ({r['baseline_trigger_text']!r})",
    ]
    lines += profile
    for run_, rate in r["transfer"].items():
        lines.append(f"transfer    {rate:.3f}   {run_}")
    lines.append(f"run         {out}   (attack.json)")
    return "\n".join(lines)
