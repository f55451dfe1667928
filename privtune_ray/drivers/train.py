"""``privtune-ray train``. Classification runs on the one engine (``engine.py``) as a population of one device;
generation (a causal LM, U-shaped or not) on the single-process loop here: batch → bottom → message → bytes → top
→ AdamW step. The loop's pieces (:func:`upload`, :func:`split_step`, :func:`physical_pieces`) also serve the
benchmarks that time a step's parts.

Every upload is serialised and deserialised, so the bytes counted are the payload's bytes and the top
side works only on what it received. Results are appended to the run directory as they are produced;
a checkpoint every ``train.checkpoint_every`` steps lets an interrupted run resume (``--resume``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..attacks.public_text import attacker_data
from ..attacks.rounds import AttackRounds
from ..attacks.suite import AttackSuite
from ..config import Config
from ..data.batching import collate, end_token_id
from ..designs.registry import design_for
from ..designs.split import SplitDesign
from ..mechanisms.registry import build_mechanism
from ..message import Message
from ..models.loading import load_split_model, load_tokenizer, resolve_model
from ..progress import plain_lines, progress_bar
from ..runs import RunSession, Summary, Totals
from ..seeding import seed_everything
from ..training.client import SplitClient
from ..training.generation import evaluate_generation
from ..training.lm_head import DeviceHead, HiddenStateServer, detach_head
from ..training.server import TopServer, adapt_top, add_cloud_levers, build_optimizer, lora_targets
from ..training.warm_start import load_public, prepare_cloud_top, uses_public_text
from .engine import run_engine, train_command
from .tasks import load_task_data, top_device, train_spec


def upload(msg: Message, counters: Totals) -> Message:
    """Serialise on the device, count the bytes, deserialise on the cloud side."""
    start = time.perf_counter()
    payload = msg.to_bytes()
    received = Message.from_bytes(payload)
    counters.comm_s += time.perf_counter() - start
    counters.bytes_up += len(payload)
    return received


def download(payload: bytes, counters: Totals) -> bytes:
    """Count what the cloud sends back to the device (a U-shaped causal LM's z)."""
    counters.bytes_down += len(payload)
    return payload


def u_shaped_step(client: SplitClient, server: HiddenStateServer, msg: Message, targets, counters: Totals) -> float:
    """The cloud returns z, the device's head takes the loss on its own targets and sends ∂ℓ/∂z back; both
    halves step. Returns the batch's mean loss (nats)."""
    z = download(server.forward(msg), counters)
    loss_sum, grad = client.head.loss_and_grad(z, msg.attention_mask, targets)
    counters.bytes_up += len(grad)
    server.backward(grad)
    server.step(msg.batch_size)
    client.head.step(msg.batch_size)
    return loss_sum / msg.batch_size


def split_step(client: SplitClient, server: TopServer, batches: list, counters: Totals, on_upload=None) -> float:
    """One step of split fine-tuning on a logical batch sent as one or more physical ``batches``
    (``train.physical_batch_size``): per piece, device forward, upload and the top's backward pass (gradients add
    up); then one optimiser step over all of them. Returns the logical batch's mean loss (nats).

    ``on_upload(message, batch)`` sees each received message (the attack suite's victim sample).
    """
    loss_sum, n = 0.0, 0
    for batch in batches:
        msg = upload(client.encode(batch), counters)
        if on_upload is not None:
            on_upload(msg, batch)
        counters.samples += len(batch.indices)
        counters.tokens += batch.num_tokens
        if client.head is not None:  # U-shaped: one piece per step (checked by the config)
            counters.step += 1
            assert isinstance(server, HiddenStateServer), "a device head pairs with the hidden-state server"
            return u_shaped_step(client, server, msg, batch.labels, counters)
        loss_sum += server.accumulate(msg)
        n += msg.batch_size
    server.step(n)
    counters.step += 1
    return loss_sum / max(n, 1)


def physical_pieces(indices: np.ndarray, size: int | None, lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """``indices`` cut into pieces of at most ``size`` samples (None: one piece). With ``lengths`` (tokens per
    sample) the batch is sorted by length first, so each piece pads to little more than its own samples: the
    logical batch and its step are the same (a sum over its samples), the padded tokens fewer."""
    if size is None or len(indices) <= size:
        return [indices]
    if lengths is not None:
        indices = indices[np.argsort(lengths[indices], kind="stable")]
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def run_training(
    cfg: Config, out: str | os.PathLike | None = None, resume: bool = False, log=print, hooks=None
) -> Path:
    """``privtune-ray train``: fine-tune ``cfg.model`` split at ``cfg.model.split_depth`` on ``cfg.data``; returns
    the run directory. A classification task runs on the engine as one device (``engine.one_device``); a generation
    task (a causal LM on SQuAD) on :func:`run_generation`, the single-process loop, until the engine has a design
    for the U-shaped round trip."""
    if train_spec(cfg).task == "classification":
        return run_engine(cfg, out, resume, log, hooks, train_command(cfg))
    return run_generation(cfg, out, resume, log)


def run_generation(cfg: Config, out: str | os.PathLike | None = None, resume: bool = False, log=print) -> Path:
    """Fine-tune a causal LM split at ``cfg.model.split_depth`` on a generation dataset: batch → bottom → message
    → bytes → top (→ the device's head, U-shaped) → AdamW step, in this process."""
    design = design_for(cfg, "train")
    assert isinstance(design, SplitDesign), "design_for(cfg, 'train') refuses the designs `train` cannot run"
    spec = train_spec(cfg)
    device = top_device(cfg.train.device)
    seed_everything(cfg.seed)  # before loading: the fresh task head is initialised from it
    # Everything that can fail on bad input is checked before the run directory is written.
    split_model = load_split_model(
        cfg.model.name, cfg.model.split_depth, task=cfg.model.task, num_labels=max(spec.num_labels, 2)
    )
    if cfg.train.lora.enabled:
        lora_targets(split_model.top, split_model.family, cfg.train.lora)
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
    batches_per_epoch, total_steps = design.train_plan(len(train_split), batches_per_epoch, cfg.train.max_steps)
    public = None  # the cloud's public text for its warm start and denoiser (never a device's data)
    if uses_public_text(cfg):
        public, public_dropped = load_public(cfg, tokenizer, [train_split.texts, eval_split.texts])
    add_cloud_levers(split_model.top, split_model.hidden_size, cfg.train)

    session = RunSession.open(cfg, out, resume)
    run = session.run
    log(f"privtune-ray: writing run to {run.path}")
    mechanism.fit(train_split)  # per-device state from the device's own data (PrivTune importance)
    attacks = None
    if aux is not None:
        suite = AttackSuite.fit_on(
            cfg, split_model, tokenizer, model_id, aux, cfg.data.dataset, train_split.texts, log=log
        )
        attacks = AttackRounds(run, cfg.attack.victim_samples, suites=suite)

    top: torch.nn.Module = split_model.top
    public_record = {}
    if public is not None and not (resume and session.has_checkpoint):  # a checkpoint holds the prepared top
        public_record = prepare_cloud_top(cfg, split_model, tokenizer, model_id, public, public_dropped, device, log)
        run.write_json("public", public_record)
    elif public is not None:
        public_record = run.read_json("public")
    device_head = None
    if cfg.model.task == "causal-lm" and cfg.model.lm_head == "device":  # U-shaped: the head and the loss stay
        head = detach_head(top)
        device_head = DeviceHead(head, *build_optimizer(head, cfg.train, total_steps))
    top = adapt_top(top, split_model.family, cfg.train)
    optimizer, scheduler = build_optimizer(top, cfg.train, total_steps)
    upload_targets = cfg.model.task == "causal-lm" and cfg.model.lm_head == "cloud"
    client = SplitClient(
        split_model.bottom, mechanism, bits=cfg.design.bits, head=device_head, upload_targets=upload_targets
    )
    if device_head is not None:
        server: TopServer = HiddenStateServer(top, optimizer, scheduler, device=device)
    else:
        server = design.top_server(top, optimizer, scheduler, device)
    for line in design.log_lines():
        log(f"privtune-ray: {line}")

    totals = Totals()
    if resume:
        if session.has_checkpoint:
            totals = _restore(session, top, optimizer, scheduler, mechanism, device_head)
        run.truncate("metrics", totals.step)  # rows written after the checkpoint are redone
        run.truncate("eval", totals.step)
        run.truncate("attacks", totals.step)
        log(f"privtune-ray: resuming at step {totals.step}/{total_steps}")

    bar = progress_bar(total=total_steps, initial=totals.step, desc="train", enabled=cfg.train.progress)
    plain = plain_lines(cfg.train.progress)
    window_loss, window_samples, window_start = [], 0, time.perf_counter()
    session_start = time.perf_counter()
    before = Totals(**asdict(totals))  # what earlier sessions of a resumed run measured

    def measured() -> None:  # the measured seconds so far, all sessions
        totals.train_wall_s = before.train_wall_s + time.perf_counter() - session_start
        totals.device_compute_s = before.device_compute_s + client.compute_s + client.mechanism_s
        totals.mechanism_compute_s = before.mechanism_compute_s + client.mechanism_s
        totals.top_compute_s = before.top_compute_s + server.compute_s

    lengths = train_split.lengths if cfg.train.length_bucketing else None  # pieces of a logical batch by length
    while totals.step < total_steps:
        batches = design.train_batches(train_split, batches_per_epoch, seed=cfg.seed * 1000 + totals.epoch)
        for idx in batches[totals.batch_in_epoch :]:
            if len(idx) == 0:  # an empty Poisson batch: a noise-only step
                server.step(0)
                totals.step += 1
            else:
                parts = physical_pieces(idx, cfg.train.physical_batch_size, lengths)
                pieces = [collate(train_split, part, pad_id) for part in parts]
                on_upload = (lambda msg, b: attacks.observe_message(msg, b, train_split)) if attacks else None
                window_loss.append(split_step(client, server, pieces, totals, on_upload))
            loss = window_loss[-1] if window_loss else float("nan")
            totals.batch_in_epoch += 1
            window_samples += len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", epoch=totals.epoch)
            measured()
            if totals.step % cfg.train.log_every == 0 or totals.step == total_steps:
                now = time.perf_counter()
                row = {
                    "step": totals.step,
                    "epoch": totals.epoch,
                    "loss": float(np.mean(window_loss)) if window_loss else float("nan"),
                    "lr": server.lr,
                    "samples": totals.samples,
                    "tokens": totals.tokens,
                    "bytes_up": totals.bytes_up,
                    "bytes_down": totals.bytes_down,
                    "samples_per_s": window_samples / max(now - window_start, 1e-9),
                    "bottom_s": client.compute_s,
                    "mechanism_s": client.mechanism_s,
                    "top_s": server.compute_s,
                    "comm_s": totals.comm_s,
                    "elapsed_s": totals.train_wall_s,
                    **design.round_fields(totals.step),
                }
                run.append("metrics", row)
                if plain:
                    log(
                        f"privtune-ray: step {totals.step}/{total_steps}: loss {row['loss']:.4f}, "
                        f"{row['samples_per_s']:.1f} samples/s, {totals.bytes_up / 2**20:.1f} MiB up, "
                        f"{totals.train_wall_s:.0f} s"
                    )
                window_loss, window_samples, window_start = [], 0, now
            if cfg.train.eval_every and totals.step % cfg.train.eval_every == 0 and totals.step < total_steps:
                _evaluate_and_log(run, client, server, eval_split, cfg, tokenizer, totals.step, log=log)
            if attacks and cfg.attack.every and totals.step % cfg.attack.every == 0 and totals.step < total_steps:
                attacks.round(totals.step)
            if totals.step % cfg.train.checkpoint_every == 0 and totals.step < total_steps:
                _checkpoint(session, top, optimizer, scheduler, mechanism, totals, device_head)
            if totals.step >= total_steps:
                break
        else:
            totals.epoch += 1
            totals.batch_in_epoch = 0
    bar.close()

    result = _evaluate_and_log(run, client, server, eval_split, cfg, tokenizer, totals.step)
    attack_summary = attacks.round(totals.step, log=log) if attacks else {}
    epochs_done = totals.samples / len(train_split)
    # A sample is released once per epoch in which it is sent (a partial epoch counts as one).
    metric = "f1"  # generation's token F1
    privacy = mechanism.guarantee(releases=max(1, math.ceil(epochs_done - 1e-9)), max_length=cfg.model.max_length)
    scores = {"dev_exact_match": result["exact_match"], "dev_f1": result["f1"]}
    lm_head = {}
    if cfg.model.task == "causal-lm":
        leak = "the token targets (the answer text) are uploaded with h̃ (model.lm_head=cloud)"
        lm_head = {
            "lm_head": cfg.model.lm_head,
            "targets_uploaded": client.upload_targets,
            "leaks": [leak] if client.upload_targets else [],
        }
    summary = Summary.of(
        cfg,
        "train",
        design.defence(),
        privacy=privacy.to_dict(),
        utility=result[metric],
        utility_metric=metric,
        dev_loss=result["loss"],
        totals=totals,
        run_dir=run.path,
        details={
            "lora": cfg.train.lora.enabled,
            "steps": totals.step,
            "epochs": round(epochs_done, 4),
            "train_split_size": len(train_split),
            **scores,
            "dev_samples": result["samples"],
            "bytes_up_per_sample": totals.bytes_up / max(totals.samples, 1),
            "bytes_up_eval": result["bytes_up"],
            "bytes_down_eval": result.get("bytes_down", 0),
            **lm_head,
            "comm_s": totals.comm_s,
            "trainable_params": sum(p.numel() for p in top.parameters() if p.requires_grad),
            "warm_start": cfg.train.warm_start.objective if cfg.train.warm_start.enabled else "none",
            "denoiser": cfg.train.denoiser.kind,
            "head_pooling": cfg.train.head_pooling,
            **public_record,
            **design.summary(None, totals.step),
            **attack_summary,
        },
    )
    session.finish(summary)
    log(f"privtune-ray: mechanism {mechanism.name}: {privacy.statement}")
    if client.upload_targets:
        log("privtune-ray: warning: model.lm_head=cloud uploaded the token targets (the answer text) with every batch")
    log(f"privtune-ray: dev {metric} {result[metric]:.4f} on {result['samples']} samples after {totals.step} steps")
    log(f"privtune-ray: wrote {run.summary_path}")
    return run.path


def _evaluate_and_log(run, client, server, split, cfg: Config, tokenizer, step: int, log=None) -> dict:
    """Generate answers for ``split`` (token F1, exact match), append the row to eval.csv, print it when ``log``."""
    pad_id = tokenizer.pad_token_id
    counters = Totals()
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
        scores = ", ".join(f"{k} {result[k]:.4f}" for k in ("exact_match", "f1", "loss") if k in result)
        log(f"privtune-ray: step {step}: {cfg.data.eval_split} {scores}")
    return result


def _checkpoint(session: RunSession, top, optimizer, scheduler, mechanism, totals: Totals, device_head=None) -> None:
    state = {
        **({"device_head": _head_state(device_head)} if device_head is not None else {}),
        "mechanism": mechanism.state_dict(),
        "top": top.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "totals": asdict(totals),
        "torch_rng": torch.get_rng_state(),
    }
    session.save(state)


def _head_state(head: DeviceHead) -> dict:
    return {
        "head": head.head.state_dict(),
        "optimizer": head.optimizer.state_dict(),
        "scheduler": head.scheduler.state_dict(),
    }


def _restore(session: RunSession, top, optimizer, scheduler, mechanism, device_head=None) -> Totals:
    state = session.load()
    if device_head is not None:
        device_head.head.load_state_dict(state["device_head"]["head"])
        device_head.optimizer.load_state_dict(state["device_head"]["optimizer"])
        device_head.scheduler.load_state_dict(state["device_head"]["scheduler"])
    mechanism.load_state_dict(state["mechanism"])
    top.load_state_dict(state["top"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return Totals(**state["totals"])
