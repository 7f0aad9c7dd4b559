"""The attack job: a classifier, a task and a method, into a run folder.

    DIR/config.toml        the options ([attack])
    DIR/provenance.json    versions, device, threads, classifier, task sizes
    DIR/attack.json        the result (see `run`; docs/attack.md lists every key), or
    DIR/profile.json       with --profile-only, the per-layer singular values alone
    DIR/sensitivity.png    the per-layer (p,q)-singular values, when the profile is on
    DIR/status.json        running | finished | failed

Every input (options, classifier, task, labels, transfer folders) is checked before the folder is
created, so a bad command leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from steadylm import rundir
from steadylm.attack.config import AttackConfig
from steadylm.attack.evaluate import fooling_rate, predict, text_fooling_rates
from steadylm.attack.jacobian import sensitivity_profile
from steadylm.attack.reuse import read_reused
from steadylm.attack.search import Batches, SearchResult, search_trigger
from steadylm.attack.victim import Victim, load_victim
from steadylm.device import resolve_device
from steadylm.errors import SteadyLMError
from steadylm.fsutil import atomic_write
from steadylm.jsonsafe import json_safe
from steadylm.provenance import provenance


def resolve_target(label: str, labels: tuple[str, ...]) -> int | None:
    """The target label id from a name or an id; None (untargeted) for ""."""
    if label == "":
        return None
    if label in labels:
        return labels.index(label)
    if label.isdigit() and int(label) < len(labels):
        return int(label)
    raise SteadyLMError(
        f"--target-label {label!r}: not a label of the classifier; valid: "
        f"{', '.join(labels)} (or their ids 0..{len(labels) - 1})"
    )


def _check_labels(task, victim: Victim, what: str) -> None:
    if len(task.labels) != len(victim.labels):
        raise SteadyLMError(
            f"{what}: task {task.name} has {len(task.labels)} labels ({', '.join(task.labels)}) "
            f"but {victim.name} predicts {len(victim.labels)} ({', '.join(victim.labels)})"
        )


def _check_out(out: Path, resume: bool) -> None:
    """DIR must be new or empty; with `resume`, it may hold an unfinished attack to start over."""
    if resume and rundir.is_run(out):
        if rundir.read_status(out).get("status") == "finished":
            raise SteadyLMError(f"--resume: the attack in {out} has finished already")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SteadyLMError(f"--out: {out} already exists and is not empty; choose another folder")


def _check_transfer(paths: list[str]) -> None:
    for p in paths:
        folder = Path(p)
        if not any(
            (folder / f).is_file()
            for f in ("classifier.json", "classifier/classifier.json", "config.json")
        ):
            raise SteadyLMError(
                f"--transfer {p}: not a classifier (a `steadylm finetune` run or a Hugging Face "
                "sequence-classifier folder)"
            )


class AttackJob:
    """A universal trigger against `cfg.classifier` by `cfg.method`, written to `out`; with
    `resume`, an unfinished attack in `out` is started over (there is nothing to continue)."""

    def __init__(
        self, cfg: AttackConfig, out: str | Path, progress: bool = True, resume: bool = False
    ):
        self.cfg, self.progress = cfg.validate(), progress
        self.classifier = classifier = cfg.classifier
        self.out = Path(out)
        _check_out(self.out, resume)
        _check_transfer(cfg.transfer_runs)
        self.device = resolve_device(cfg.device, option="--device")
        self._load_tasks()  # before the model: a wrong task name fails fast
        self.victim = load_victim(classifier, self.device, cfg.max_length, cfg.profile_only)
        self.target: int | None = None
        if cfg.profile_only:  # no labels involved
            return
        for task, flag in ((self.task, "--task"), (self.eval_task, "--eval-task"),
                           (self.select, "--select-task")):  # fmt: skip
            if task is not None:
                _check_labels(task, self.victim, flag)
        self.target = resolve_target(cfg.target_label, self.victim.labels)
        n = self.victim.n_layer
        if cfg.layer_number is not None and cfg.layer_number > n:
            raise SteadyLMError(f"--layer {cfg.layer}: {classifier} has blocks 1..{n}")
        self.reused = read_reused(cfg, n)

    def _load_tasks(self) -> None:
        """The search task (train split), the scoring task (test split) and, for luat --layer
        auto, the selection task (validation split)."""
        from steadylm.tasks import load_task

        cfg = self.cfg

        def load(name: str, split: str, flag: str):
            task = load_task(name, progress=self.progress) if name else self.task
            if not getattr(task, split):
                raise SteadyLMError(f"{flag} {task.name}: its {split} split is empty")
            return task

        self.task = load_task(cfg.task, progress=self.progress)
        if not self.task.train:
            raise SteadyLMError(f"--task {self.task.name}: its train split is empty")
        if cfg.profile_only:  # the profile reads training texts only
            self.eval_task, self.select = self.task, None
            return
        self.eval_task = load(cfg.eval_task, "test", "--eval-task")
        auto = cfg.method == "luat" and cfg.layer_number is None
        self.select = load(cfg.select_task, "validation", "--select-task") if auto else None

    # --------------------------------------------------------------- the parts

    def _rows(self, examples) -> tuple[list[list[int]], torch.Tensor]:
        rows = self.victim.encode([e.text for e in examples], self.cfg.trigger_len)
        return rows, torch.tensor([e.label for e in examples], dtype=torch.long)

    def _profile(self, rows: list[list[int]]) -> list[dict]:
        """The profile on `profile_examples` training inputs, the first of the seeded order
        (the search's first batch draws from the same order)."""
        cfg, v = self.cfg, self.victim
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed))
        rows = [rows[i] for i in order[: cfg.profile_examples].tolist()]
        trigger = v.neutral_trigger(cfg.trigger_len)
        ids, mask = v.batch(rows, trigger)
        return sensitivity_profile(v, ids, mask, v.token_embeddings(trigger), cfg.p, cfg.q,
                                   cfg.power_iters, cfg.seed, self.progress)  # fmt: skip

    def _search(self, batches: Batches) -> tuple[SearchResult, list[dict]]:
        """The trigger; for luat --layer auto, every layer's search and its selection score."""
        cfg, v = self.cfg, self.victim
        emb = v.embedding_matrix()  # (V, C)
        allowed = v.candidate_mask(emb.shape[0])
        if cfg.method == "uat" or cfg.layer_number is not None:
            layer = None if cfg.method == "uat" else cfg.layer_number
            reused = self.reused.get(layer)
            if reused:
                return SearchResult(reused.trigger, layer, reused.history, reused.seconds), []
            return search_trigger(
                v, batches, cfg, self.target, layer, allowed, emb, self.progress
            ), []
        assert self.select is not None
        sel_rows, sel_labels = self._rows(self.select.validation[: cfg.select_examples])
        sel_clean = predict(v, sel_rows)
        per_layer, best = [], None
        for layer in tqdm(
            range(1, v.n_layer + 1), desc="layers", unit="layer", disable=not self.progress
        ):
            reused = self.reused.get(layer)
            if reused:
                found = SearchResult(reused.trigger, layer, reused.history, reused.seconds)
            else:
                batches.restart()
                found = search_trigger(v, batches, cfg, self.target, layer, allowed, emb,
                                       self.progress, desc=f"layer {layer}")  # fmt: skip
            rate, n = fooling_rate(v, sel_rows, sel_labels, found.trigger, self.target, sel_clean)
            per_layer.append({"layer": layer, "trigger_ids": found.trigger,
                              "trigger_text": v.decode(found.trigger), "select_fooling_rate": rate,
                              "select_n": n, "seconds": found.seconds,
                              "reused_from": reused.source if reused else None})  # fmt: skip
            if best is None or rate > best[0]:  # ties keep the shallower layer
                best = (rate, found)
        assert best is not None
        return best[1], per_layer

    def _reused_from(self) -> str | None:
        """The --reuse folder the trigger was read from, for uat and --layer N (auto records it
        per layer in layer_selection)."""
        cfg = self.cfg
        if cfg.method == "luat" and cfg.layer_number is None:
            return None
        reused = self.reused.get(None if cfg.method == "uat" else cfg.layer_number)
        return reused.source if reused else None

    def _transfer(self, trigger_text: str) -> dict[str, dict[str, Any]]:
        cfg, out = self.cfg, {}
        test = self.eval_task.test[: cfg.max_eval or None]
        texts = [e.text for e in test]
        labels = torch.tensor([e.label for e in test], dtype=torch.long)
        neutral = " ".join(["the"] * cfg.trigger_len)
        for path in cfg.transfer_runs:
            other = load_victim(path, self.device, cfg.max_length)
            _check_labels(self.eval_task, other, f"--transfer {path}")
            bar = f"transfer {Path(path).name}" if self.progress else ""
            _, rates, n = text_fooling_rates(
                other, texts, labels, (trigger_text, neutral), self.target, bar
            )
            out[path] = {"fooling_rate": rates[trigger_text], "n_eval": n,
                         "baseline_fooling_rate": rates[neutral]}  # fmt: skip
        return out

    # ------------------------------------------------------------------- run

    def run(self) -> dict[str, Any]:
        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        (out / rundir.CONFIG).write_text(self.cfg.to_toml())
        sizes = {s: len(getattr(self.task, s)) for s in ("train", "validation", "test")}
        prov = provenance(self.device, classifier=self.classifier, task=self.task.name,
                          eval_task=self.eval_task.name,
                          labels=list(self.victim.labels), task_sizes=sizes)  # fmt: skip
        (out / rundir.PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")
        rundir.write_status(out, "running")
        try:
            result = self._run_profile() if self.cfg.profile_only else self._run()
        except KeyboardInterrupt:
            rundir.write_status(out, "failed", error="interrupted")
            raise
        except BaseException as e:
            rundir.write_status(out, "failed", error=f"{type(e).__name__}: {e}")
            raise
        rundir.write_status(out, "finished")
        return result

    def _run_profile(self) -> dict[str, Any]:
        """--profile-only: the per-layer singular values alone, into profile.json."""
        t0 = time.perf_counter()
        profile = self._profile(self._rows(self.task.train)[0])
        result = {
            "method": "profile",
            "sensitivity": profile,
            "classifier": self.classifier,
            "task": self.task.name,
            "n_layer": self.victim.n_layer,
            "options": dataclasses.asdict(self.cfg),
            "timings": {"profile_seconds": time.perf_counter() - t0},
        }
        self._write(result, "profile.json")
        return result

    def _write(self, result: dict[str, Any], name: str) -> None:
        with atomic_write(self.out / name) as f:
            f.write((json.dumps(json_safe(result), indent=1) + "\n").encode())
        if result["sensitivity"]:
            from steadylm.attack.plot import plot_sensitivity

            plot_sensitivity(result, self.out / "sensitivity.png")

    def _run(self) -> dict[str, Any]:
        cfg, v = self.cfg, self.victim
        timings: dict[str, float] = {}
        train_rows, train_labels = self._rows(self.task.train)
        batches = Batches(v, train_rows, train_labels, cfg.batch, self.target, cfg.seed)

        t0 = time.perf_counter()
        profile = self._profile(train_rows) if cfg.profile else []
        timings["profile_seconds"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        found, per_layer = self._search(batches)
        timings["search_seconds"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        test_rows, test_labels = self._rows(self.eval_task.test[: cfg.max_eval or None])
        bar = "test" if self.progress else ""
        clean = predict(v, test_rows, bar=bar)
        rate, n = fooling_rate(v, test_rows, test_labels, found.trigger, self.target, clean, bar)
        neutral = v.neutral_trigger(cfg.trigger_len)
        base, _ = fooling_rate(v, test_rows, test_labels, neutral, self.target, clean, bar)
        timings["eval_seconds"] = time.perf_counter() - t0

        trigger_text = v.decode(found.trigger)
        t0 = time.perf_counter()
        transfer = self._transfer(trigger_text) if cfg.transfer else {}
        timings["transfer_seconds"] = time.perf_counter() - t0

        result: dict[str, Any] = {
            "method": cfg.method,
            "layer": found.layer,
            "trigger_ids": found.trigger,
            "trigger_text": trigger_text,
            "fooling_rate": rate,
            "n_eval": n,
            "baseline_fooling_rate": base,
            "baseline_trigger_text": v.decode(neutral),
            "clean_accuracy": float((clean == test_labels).float().mean()),
            "target_label": None if self.target is None else v.labels[self.target],
            "transfer": {k: r["fooling_rate"] for k, r in transfer.items()},
            "transfer_detail": transfer,
            "sensitivity": profile,
            "layer_selection": per_layer,
            "reused_from": self._reused_from(),
            "history": found.history,
            "classifier": self.classifier,
            "task": self.task.name,
            "eval_task": self.eval_task.name,
            "labels": list(v.labels),
            "n_layer": v.n_layer,
            "options": dataclasses.asdict(cfg),
            "timings": timings,
        }
        self._write(result, "attack.json")
        return result
