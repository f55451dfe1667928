"""Reference split fine-tuning, single process: batch → bottom → message → bytes → top → AdamW step.

Every upload is serialised and deserialised, so the bytes counted are the payload's bytes and the top
side works only on what it received. Results are appended to the run directory as they are produced;
a checkpoint every ``train.checkpoint_every`` steps lets an interrupted run resume (``--resume``).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..attacks.observations import Observations
from ..attacks.suite import AttackSuite, VictimSample, carve_aux, headline, load_aux, long_rows, probe_attributes
from ..config import Config
from ..data.batching import TokenizedSplit, batch_indices, collate, end_token_id, tokenize_generation, tokenize_split
from ..data.registry import get_spec, load_split
from ..errors import ConfigError
from ..mechanisms import build_mechanism
from ..message import Message
from ..models.loading import load_split_model, load_tokenizer, resolve_model
from ..progress import plain_lines, progress_bar
from ..runs import RunDir
from .client import SplitClient
from .generation import evaluate_generation
from .lm_head import DeviceHead, HiddenStateServer, detach_head
from .server import TopServer, apply_lora, build_optimizer, summed_loss


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Counters:
    """Cumulative totals of a run (restored on resume)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of ``epoch`` already trained on
    samples: int = 0
    tokens: int = 0
    bytes_up: int = 0
    bytes_down: int = 0  # U-shaped causal LM: the z the cloud returns
    comm_s: float = 0.0  # serialisation + deserialisation seconds
    train_s: float = 0.0  # wall seconds spent in the training loop (all sessions of a resumed run)
    extra: dict = field(default_factory=dict)


def top_device(name: str) -> str:
    """``train.device`` as a torch device: ``auto`` is cuda when torch sees a GPU; cuda without one is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but torch sees no GPU: use train.device=auto or cpu")
    return name


def upload(msg: Message, counters: Counters) -> Message:
    """Serialise on the device, count the bytes, deserialise on the cloud side."""
    start = time.perf_counter()
    payload = msg.to_bytes()
    received = Message.from_bytes(payload)
    counters.comm_s += time.perf_counter() - start
    counters.bytes_up += len(payload)
    return received


def download(payload: bytes, counters: Counters) -> bytes:
    """Count what the cloud sends back to the device (a U-shaped causal LM's z)."""
    counters.bytes_down += len(payload)
    return payload


def u_shaped_step(client: SplitClient, server: HiddenStateServer, msg: Message, targets, counters: Counters) -> float:
    """The cloud returns z, the device's head takes the loss on its own targets and sends ∂ℓ/∂z back; both
    halves step. Returns the batch's mean loss (nats)."""
    z = download(server.forward(msg), counters)
    loss_sum, grad = client.head.loss_and_grad(z, msg.attention_mask, targets)
    counters.bytes_up += len(grad)
    server.backward(grad)
    server.step(msg.batch_size)
    client.head.step(msg.batch_size)
    return loss_sum / msg.batch_size


def split_step(client: SplitClient, server: TopServer, batch, counters: Counters, on_upload=None) -> float:
    """One step of split fine-tuning: device forward, upload, top-model update. Returns the loss (nats).

    ``on_upload(message, batch)`` sees each received message (the attack suite's victim sample).
    """
    msg = upload(client.encode(batch), counters)
    if on_upload is not None:
        on_upload(msg, batch)
    if client.head is None:
        loss = server.train_step(msg)
    else:
        loss = u_shaped_step(client, server, msg, batch.labels, counters)
    counters.step += 1
    counters.samples += len(batch.indices)
    counters.tokens += batch.num_tokens
    return loss


def evaluate(
    client: SplitClient,
    server: TopServer,
    split: TokenizedSplit,
    batch_size: int,
    pad_id: int,
    progress: bool = True,
    desc: str = "eval",
) -> dict:
    """Accuracy and mean cross-entropy (nats) on ``split``, through the same upload path as training."""
    counters = Counters()
    correct, loss_sum = 0, 0.0
    batches = batch_indices(split.lengths, batch_size, shuffle=False, bucketing=True)
    for idx in progress_bar(batches, desc=desc, enabled=progress, leave=False):
        msg = upload(client.encode(collate(split, idx, pad_id)), counters)
        logits = server.predict(msg)
        correct += int((logits.argmax(-1) == msg.labels).sum())
        loss_sum += float(summed_loss(logits, msg.labels))
    n = len(split)
    return {"accuracy": correct / n, "loss": loss_sum / n, "samples": n, "bytes_up": counters.bytes_up}


def classification_spec(cfg: Config, command: str):
    """The dataset's spec; a generation dataset or a causal-LM task is an error naming the datasets that fit."""
    spec = get_spec(cfg.data.dataset)
    if spec.task != "classification" or cfg.model.task != "classification":
        raise ConfigError(
            f"`privtune-ray {command}` fine-tunes classification tasks; data.dataset={cfg.data.dataset!r} is a "
            f"{spec.task} task and model.task={cfg.model.task!r}: pick sst2, financial_phrasebank, blog, ag_news or trustpilot"
        )
    return spec


def require_one_cut(cfg: Config, command: str) -> None:
    """``train`` and ``attack`` run the designs with one cut (split, ewtune); GuardedTuning's run in ``simulate``."""
    from ..designs.guarded import GUARDED

    if cfg.design.name in GUARDED:
        raise ConfigError(
            f"design.name={cfg.design.name} (GuardedTuning) runs under `privtune-ray simulate`, not `{command}`: a "
            f"population of one device is the single-client setting (--set simulation.devices=1 "
            f"--set simulation.devices_per_round=1), e.g. simulations/sst2_designs.yaml"
        )


def train_spec(cfg: Config):
    """``privtune-ray train``: a classification dataset with a classifier, or a generation dataset (SQuAD)
    with a causal LM; a mismatch is an error naming the key to change."""
    require_one_cut(cfg, "train")
    spec = get_spec(cfg.data.dataset)
    if spec.task == "generation" and cfg.model.task != "causal-lm":
        raise ConfigError(
            f"data.dataset={cfg.data.dataset!r} is a generation task: set model.task=causal-lm and a "
            f"decoder model (a gpt2, opt or llama checkpoint), as simulations/squad_generation.yaml does"
        )
    if spec.task == "generation":
        if cfg.design.name == "ewtune" and cfg.model.lm_head == "device":
            raise ConfigError(
                "design.name=ewtune clips per-sample gradients of a loss the cloud computes; with a causal "
                "LM that loss is on the device (model.lm_head=device): use design.name=split"
            )
        return spec
    if cfg.model.task == "causal-lm":
        raise ConfigError(
            f"model.task=causal-lm needs a generation dataset (squad); {cfg.data.dataset!r} is a "
            f"{spec.task} task: set model.task=classification"
        )
    return classification_spec(cfg, "train")


def load_task_data(cfg: Config, tokenizer, spec) -> tuple[TokenizedSplit, TokenizedSplit]:
    """The tokenised training split (with the dataset's private attributes) and eval split of ``cfg.data``;
    generation datasets as prompt + answer sequences (:func:`tokenize_generation`)."""
    load = dict(data_dir=cfg.data.data_dir, hub_fallback=cfg.data.hub_fallback, seed=cfg.seed)
    train_raw = load_split(cfg.data.dataset, cfg.data.train_split, max_samples=cfg.data.max_train_samples, **load)
    eval_raw = load_split(cfg.data.dataset, cfg.data.eval_split, max_samples=cfg.data.max_eval_samples, **load)
    if spec.task == "generation":
        n = cfg.train.max_new_tokens
        return (
            tokenize_generation(train_raw, tokenizer, cfg.model.max_length, n),
            tokenize_generation(eval_raw, tokenizer, cfg.model.max_length, n),
        )
    return (
        tokenize_split(train_raw, tokenizer, cfg.model.max_length, attributes=spec.attributes),
        tokenize_split(eval_raw, tokenizer, cfg.model.max_length),
    )


def run_training(cfg: Config, out: str | os.PathLike | None = None, resume: bool = False, log=print) -> Path:
    """Fine-tune ``cfg.model`` split at ``cfg.model.split_depth`` on ``cfg.data``; returns the run directory."""
    from ..designs.ewtune import (
        DPTopServer,
        plan_dp_sgd,
        poisson_batches,
        spent_epsilon,
        steps_per_epoch,
    )  # uses .server

    spec = train_spec(cfg)
    device = top_device(cfg.train.device)
    seed_everything(cfg.seed)  # before loading: the fresh task head is initialised from it
    # Everything that can fail on bad input is checked before the run directory is written.
    split_model = load_split_model(
        cfg.model.name, cfg.model.split_depth, task=cfg.model.task, num_labels=max(spec.num_labels, 2)
    )
    tokenizer = load_tokenizer(cfg.model.name)
    train_split, eval_split = load_task_data(cfg, tokenizer, spec)
    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
    pad_id = tokenizer.pad_token_id
    model_id = resolve_model(cfg.model.name)
    mechanism = build_mechanism(cfg.mechanism, split_model, tokenizer, model_id, seed=cfg.seed)
    aux = None
    if cfg.attack.enabled:
        aux, train_split = attacker_data(cfg, tokenizer, train_split)
    batches_per_epoch = -(-len(train_split) // cfg.train.batch_size)
    dp_plan = None
    if cfg.design.name == "ewtune":  # Poisson batches: 1/q per epoch; σ calibrated for the whole run
        batches_per_epoch = steps_per_epoch(min(1.0, cfg.train.batch_size / len(train_split)))
    total_steps = cfg.train.epochs * batches_per_epoch
    if cfg.train.max_steps is not None:
        total_steps = min(total_steps, cfg.train.max_steps)
    if cfg.design.name == "ewtune":
        dp_plan = plan_dp_sgd(cfg.design, cfg.train.batch_size / len(train_split), total_steps)

    run = RunDir.create(cfg, out, resume=resume)
    log(f"privtune-ray: writing run to {run.path}")
    mechanism.fit(train_split)  # per-device state from the device's own data (PrivTune importance)
    attacks = None
    if aux is not None:
        attacks = AttackRounds(
            AttackSuite.fit_on(
                cfg, split_model, tokenizer, model_id, aux, cfg.data.dataset, train_split.texts, log=log
            ),
            cfg.attack,
            train_split,
            run,
        )

    top = split_model.top
    device_head = None
    if cfg.model.task == "causal-lm" and cfg.model.lm_head == "device":  # U-shaped: the head and the loss stay
        head = detach_head(top)
        device_head = DeviceHead(head, *build_optimizer(head, cfg.train, total_steps))
    if cfg.train.lora.enabled:
        top = apply_lora(top, split_model.family, cfg.train.lora)
    optimizer, scheduler = build_optimizer(top, cfg.train, total_steps)
    client = SplitClient(
        split_model.bottom,
        mechanism,
        bits=cfg.design.bits,
        head=device_head,
        upload_targets=cfg.model.task == "causal-lm" and cfg.model.lm_head == "cloud",
    )
    if device_head is not None:
        server = HiddenStateServer(top, optimizer, scheduler, device=device)
    elif dp_plan is None:
        server = TopServer(top, optimizer, scheduler, device=device)
    else:
        server = DPTopServer(top, optimizer, scheduler, dp_plan, cfg.train.batch_size, device=device, seed=cfg.seed)
        log(f"privtune-ray: EW-Tune DP-SGD: {dp_plan.describe()}")
        if dp_plan.pld_warning():
            log(f"privtune-ray: {dp_plan.pld_warning()}")

    counters = Counters()
    if resume:
        if run.summary_path.exists():
            raise ConfigError(
                f"--resume: the run in {str(run.path)!r} has finished (summary.json exists); start a new one"
            )
        if run.checkpoint_path.exists() or run.previous_checkpoint_path.exists():
            counters = _restore(run, top, optimizer, scheduler, mechanism, device_head)
        run.truncate("metrics", counters.step)  # rows written after the checkpoint are redone
        run.truncate("eval", counters.step)
        run.truncate("attacks", counters.step)
        log(f"privtune-ray: resuming at step {counters.step}/{total_steps}")

    bar = progress_bar(total=total_steps, initial=counters.step, desc="train", enabled=cfg.train.progress)
    plain = plain_lines(cfg.train.progress)
    window_loss, window_samples, window_start = [], 0, time.perf_counter()
    session_start = time.perf_counter()
    train_s_before = counters.train_s
    while counters.step < total_steps:
        epoch_seed = cfg.seed * 1000 + counters.epoch
        if dp_plan is None:
            batches = batch_indices(
                train_split.lengths,
                cfg.train.batch_size,
                shuffle=True,
                bucketing=cfg.train.length_bucketing,
                seed=epoch_seed,
            )
        else:
            batches = poisson_batches(len(train_split), cfg.train.batch_size, batches_per_epoch, seed=epoch_seed)
        for idx in batches[counters.batch_in_epoch :]:
            if len(idx) == 0:  # an empty Poisson batch: a noise-only step
                server.step(0)
                counters.step += 1
            else:
                window_loss.append(
                    split_step(
                        client,
                        server,
                        collate(train_split, idx, pad_id),
                        counters,
                        attacks.observe if attacks else None,
                    )
                )
            loss = window_loss[-1] if window_loss else float("nan")
            counters.batch_in_epoch += 1
            window_samples += len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", epoch=counters.epoch)
            counters.train_s = train_s_before + time.perf_counter() - session_start
            if counters.step % cfg.train.log_every == 0 or counters.step == total_steps:
                now = time.perf_counter()
                row = {
                    "step": counters.step,
                    "epoch": counters.epoch,
                    "loss": float(np.mean(window_loss)) if window_loss else float("nan"),
                    "lr": server.lr,
                    "samples": counters.samples,
                    "tokens": counters.tokens,
                    "bytes_up": counters.bytes_up,
                    "bytes_down": counters.bytes_down,
                    "samples_per_s": window_samples / max(now - window_start, 1e-9),
                    "bottom_s": client.compute_s,
                    "mechanism_s": client.mechanism_s,
                    "top_s": server.compute_s,
                    "comm_s": counters.comm_s,
                    "elapsed_s": counters.train_s,
                    **(spent_epsilon(dp_plan, counters.step) if dp_plan else {}),
                }
                run.append("metrics", row)
                if plain:
                    log(
                        f"privtune-ray: step {counters.step}/{total_steps}: loss {row['loss']:.4f}, "
                        f"{row['samples_per_s']:.1f} samples/s, {counters.bytes_up / 2**20:.1f} MiB up, {counters.train_s:.0f} s"
                    )
                window_loss, window_samples, window_start = [], 0, now
            if cfg.train.eval_every and counters.step % cfg.train.eval_every == 0 and counters.step < total_steps:
                _evaluate_and_log(run, client, server, eval_split, cfg, tokenizer, counters.step, log=log)
            if attacks and cfg.attack.every and counters.step % cfg.attack.every == 0 and counters.step < total_steps:
                attacks.round(counters.step)
            if counters.step % cfg.train.checkpoint_every == 0 and counters.step < total_steps:
                _checkpoint(run, top, optimizer, scheduler, mechanism, counters, device_head)
            if counters.step >= total_steps:
                break
        else:
            counters.epoch += 1
            counters.batch_in_epoch = 0
    bar.close()

    result = _evaluate_and_log(run, client, server, eval_split, cfg, tokenizer, counters.step)
    attack_summary = attacks.round(counters.step, log=log) if attacks else {}
    epochs_done = counters.samples / len(train_split)
    # A sample is released once per epoch in which it is sent (a partial epoch counts as one).
    metric = "accuracy" if "accuracy" in result else "f1"  # classification, or generation's token F1
    privacy = mechanism.guarantee(releases=max(1, math.ceil(epochs_done - 1e-9)), max_length=cfg.model.max_length)
    summary = {
        "name": cfg.name,
        "dataset": cfg.data.dataset,
        "model": cfg.model.name,
        "split_depth": cfg.model.split_depth,
        "mechanism": mechanism.name,
        "privacy": privacy.to_dict(),
        "lora": cfg.train.lora.enabled,
        "seed": cfg.seed,
        "steps": counters.step,
        "epochs": round(epochs_done, 4),
        "train_samples": counters.samples,
        "train_split_size": len(train_split),
        **(
            {"dev_accuracy": result["accuracy"]}
            if "accuracy" in result
            else {"dev_exact_match": result["exact_match"], "dev_f1": result["f1"]}
        ),
        "utility": result[metric],
        "utility_metric": metric,
        "dev_loss": result["loss"],
        "dev_samples": result["samples"],
        "bytes_up": counters.bytes_up,
        "bytes_up_per_sample": counters.bytes_up / max(counters.samples, 1),
        "bytes_down": counters.bytes_down,
        "bytes_up_eval": result["bytes_up"],
        "bytes_down_eval": result.get("bytes_down", 0),
        **(
            {
                "lm_head": cfg.model.lm_head,
                "targets_uploaded": client.upload_targets,
                "leaks": ["the token targets (the answer text) are uploaded with h̃ (model.lm_head=cloud)"]
                if client.upload_targets
                else [],
            }
            if cfg.model.task == "causal-lm"
            else {}
        ),
        "train_wall_s": counters.train_s,
        "train_samples_per_s": counters.samples / max(counters.train_s, 1e-9),
        "bottom_compute_s": client.compute_s,
        "mechanism_compute_s": client.mechanism_s,
        "top_compute_s": server.compute_s,
        "comm_s": counters.comm_s,
        "trainable_params": sum(p.numel() for p in top.parameters() if p.requires_grad),
        "design": cfg.design.name,
        **({"dp_sgd": {**dp_plan.to_dict(), "spent": spent_epsilon(dp_plan, counters.step)}} if dp_plan else {}),
        **attack_summary,
        "run_dir": str(run.path),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    run.write_summary(summary)
    run.remove_checkpoints()  # the run is complete; summary.json marks it
    log(f"privtune-ray: mechanism {mechanism.name}: {privacy.statement}")
    if client.upload_targets:
        log("privtune-ray: warning: model.lm_head=cloud uploaded the token targets (the answer text) with every batch")
    log(f"privtune-ray: dev {metric} {result[metric]:.4f} on {result['samples']} samples after {counters.step} steps")
    log(f"privtune-ray: wrote {run.summary_path}")
    return run.path


def attacker_data(cfg: Config, tokenizer, train_split: TokenizedSplit) -> tuple[TokenizedSplit, TokenizedSplit]:
    """(the attacker's auxiliary sentences, the devices' training data). When the auxiliary data comes from
    the training split, it is carved out of it, so the devices never send those sentences."""
    probe_attributes(cfg.attack, cfg.data.dataset)
    if (cfg.attack.aux_dataset or cfg.data.dataset, cfg.attack.aux_split) == (cfg.data.dataset, cfg.data.train_split):
        return carve_aux(train_split, cfg.attack.aux_samples, cfg.seed + 17)
    return load_aux(cfg, tokenizer, cfg.data.dataset, cfg.data.train_split), train_split


class AttackRounds:
    """Attack rounds during training: the latest ``attack.victim_samples`` received sentences, attacked
    every ``attack.every`` steps and once at the end; rows appended to ``attacks.csv`` as produced."""

    def __init__(self, suite: AttackSuite, cfg, train_split: TokenizedSplit, run: RunDir):
        self.suite, self.train_split, self.run = suite, train_split, run
        self.sample = VictimSample(cfg.victim_samples)

    def observe(self, msg: Message, batch) -> None:
        data = self.train_split
        self.sample.add(
            Observations.from_message(
                msg,
                batch.input_ids,
                {k: v[batch.indices] for k, v in data.attributes.items()},
                [data.texts[i] for i in batch.indices],
            )
        )

    def round(self, step: int, log=None) -> dict:
        victims = self.sample.take()
        rows = self.suite.run(victims)
        for row in long_rows(rows, step=step, victims=len(victims)):
            self.run.append("attacks", row)
        if log is not None:
            for r in rows:
                score = (
                    f"ASR top-1 {r['asr_top1']:.3f}" if r["kind"] == "inversion" else f"advantage {r['advantage']:+.3f}"
                )
                log(f"privtune-ray: attack {r['attack']:<22} {score} on {len(victims)} victim sentences")
        return {
            "attacks": {r["attack"]: {k: v for k, v in r.items() if k != "attack"} for r in rows},
            **headline(rows),
            "attack_setup": self.suite.describe(),
        }


def _evaluate_and_log(run, client, server, split, cfg: Config, tokenizer, step: int, log=None) -> dict:
    """Evaluate on ``split``, append the row to eval.csv, and print it when ``log`` is given."""
    pad_id = tokenizer.pad_token_id
    if split.prompt_lengths is None:
        result = evaluate(client, server, split, cfg.train.eval_batch_size, pad_id, progress=cfg.train.progress)
    else:
        counters = Counters()
        result = evaluate_generation(
            client,
            server,
            split,
            tokenizer,
            cfg.train.eval_batch_size,
            pad_id,
            end_token_id(tokenizer),
            cfg.train.max_new_tokens,
            lambda msg: upload(msg, counters),
            lambda payload: download(payload, counters),
            progress=cfg.train.progress,
        )
        result["bytes_up"], result["bytes_down"] = counters.bytes_up, counters.bytes_down
    run.append("eval", {"step": step, "split": cfg.data.eval_split, **result})
    if log is not None:
        scores = ", ".join(f"{k} {result[k]:.4f}" for k in ("accuracy", "exact_match", "f1", "loss") if k in result)
        log(f"privtune-ray: step {step}: {cfg.data.eval_split} {scores}")
    return result


def _checkpoint(run: RunDir, top, optimizer, scheduler, mechanism, counters: Counters, device_head=None) -> None:
    state = {
        **({"device_head": _head_state(device_head)} if device_head is not None else {}),
        "mechanism": mechanism.state_dict(),
        "top": top.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "counters": counters.__dict__,
        "torch_rng": torch.get_rng_state(),
    }
    run.save_checkpoint(state)


def _head_state(head: DeviceHead) -> dict:
    return {
        "head": head.head.state_dict(),
        "optimizer": head.optimizer.state_dict(),
        "scheduler": head.scheduler.state_dict(),
    }


def _restore(run: RunDir, top, optimizer, scheduler, mechanism, device_head=None) -> Counters:
    state = run.load_checkpoint()
    if device_head is not None:
        device_head.head.load_state_dict(state["device_head"]["head"])
        device_head.optimizer.load_state_dict(state["device_head"]["optimizer"])
        device_head.scheduler.load_state_dict(state["device_head"]["scheduler"])
    mechanism.load_state_dict(state["mechanism"])
    top.load_state_dict(state["top"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return Counters(**state["counters"])
