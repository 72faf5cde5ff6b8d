"""Scoring held-out normal windows: what model selection and calibration read. No test labels."""

from __future__ import annotations

import numpy as np
import torch

from .. import pseudo
from ..dataset import Clip, WindowSet
from ..inference import score_windows
from ..model import d_loss_map, d_patch_losses, patch_label_loss, split_window, with_middle
from ..windows import to_tensor

VAL_PSEUDO_SEED = 20180415  # the validation pseudo-anomalies are the same for every run and epoch


def validate(generator, discriminator, clips: list[Clip], device, batch_size: int = 8, generated: bool = False,
             patch_max: bool = False):
    """Per-window pixel loss and -log D(S_t) on the given clips (with `patch_max`, the second array
    is the largest patch's -log D instead of the mean over D's patches): two float64 arrays; with
    `generated`, two more from one pass over the generated window S^_t: -log(1 - D(S^_t)), the
    discriminator's loss labelling it fake, and -log D(S^_t), labelling it real (--generated-as-real).

    Always fp32, whatever the training precision: calibration must match `stan detect`'s default.
    """
    generator.eval()
    discriminator.eval()
    columns: list[list[np.ndarray]] = [[], [], [], []]
    loader = torch.utils.data.DataLoader(WindowSet(clips), batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        for batch in loader:
            x = to_tensor(batch).to(device)
            scores = score_windows(generator, discriminator, x, "fp32")
            columns[0].append(scores.pixel.cpu().double().numpy())
            columns[1].append((scores.d_max if patch_max else scores.d).cpu().double().numpy())
            if generated:
                logits = discriminator(with_middle(x, scores.prediction.to(x.dtype)))
                columns[2].append(d_loss_map(logits, real=False).cpu().double().numpy())
                columns[3].append(d_loss_map(logits, real=True).cpu().double().numpy())
    generator.train()
    discriminator.train()
    arrays = tuple(np.concatenate(c) if c else np.zeros(0) for c in columns)
    return arrays if generated else arrays[:2]


@torch.no_grad()
def validate_generated(generator, discriminator, clips: list[Clip], device, batch_size: int = 8):
    """Windows with `generator`'s middle frame: per window -log(1 - D) (the loss that labels them
    fake) and -log D (the loss that labels them real). Two float64 arrays; always fp32."""
    modes = generator.training, discriminator.training
    generator.eval()
    discriminator.eval()
    fake_loss, real_loss = [], []
    for batch in torch.utils.data.DataLoader(WindowSet(clips), batch_size=batch_size, shuffle=False):
        x = to_tensor(batch).to(device)
        logits = discriminator(with_middle(x, generator(split_window(x)[0]).to(x.dtype)))
        fake_loss.append(d_loss_map(logits, real=False).cpu().double().numpy())
        real_loss.append(d_loss_map(logits, real=True).cpu().double().numpy())
    generator.train(modes[0])
    discriminator.train(modes[1])
    return tuple(np.concatenate(c) if c else np.zeros(0) for c in (fake_loss, real_loss))


@torch.no_grad()
def validate_pseudo(discriminator, clips: list[Clip], kinds: tuple[str, ...], device, batch_size: int = 8,
                    local_labels: bool = False, patch_max: bool = False):
    """One pseudo-anomaly per held-out normal window, the kinds in turn, made by a fixed generator:
    per window the loss that labels it fake (-log(1 - D); with `local_labels`, as --local-labels
    trains: fake only in the patches a local anomaly covers, real in the others) and -log D (its d
    score; with `patch_max`, the largest patch's -log D instead of the mean). Two float64 arrays."""
    made = validation_pseudo_windows(clips, kinds)
    discriminator.eval()
    fake_loss, score = [], []
    for i in range(0, len(made), batch_size):
        chunk = made[i : i + batch_size]
        x = to_tensor(torch.from_numpy(np.stack([w for w, _ in chunk]))).to(device)  # (b, 11, 1, S, S)
        logits = discriminator(x)
        if local_labels:
            labels = pseudo.patch_labels([box for _, box in chunk], x.shape[-1], tuple(logits.shape[-2:]))
            fake_loss.append(patch_label_loss(logits, torch.from_numpy(labels).to(logits.device)).cpu().double().numpy())
        else:
            fake_loss.append(d_loss_map(logits, real=False).cpu().double().numpy())
        terms = d_patch_losses(logits, real=True)
        score.append((terms.max(dim=1).values if patch_max else terms.mean(dim=1)).cpu().double().numpy())
    discriminator.train()
    return tuple(np.concatenate(c) if c else np.zeros(0) for c in (fake_loss, score))


def validation_pseudo_windows(clips: list[Clip], kinds: tuple[str, ...]) -> list:
    """One pseudo-anomaly per window of `clips`, the kinds in turn, drawn by the fixed validation
    generator: [(uint8 (11, S, S) window, boxes or None), ...], the same for every caller."""
    windows = WindowSet(clips)
    rng = np.random.default_rng(VAL_PSEUDO_SEED)
    return [pseudo.make_boxed(kinds[i % len(kinds)], clips, *windows.index[i], rng) for i in range(len(windows))]


def _window_batches(windows: list, batch_size: int, device):
    """uint8 (11, S, S) windows as network input, batch_size at a time: (b, 11, 1, S, S) tensors."""
    for i in range(0, len(windows), batch_size):
        yield to_tensor(torch.from_numpy(np.stack([np.asarray(w) for w in windows[i : i + batch_size]]))).to(device)


@torch.no_grad()
def generated_scores(generator, discriminator, windows: list, device, batch_size: int = 8) -> np.ndarray:
    """The d score on the generated window of uint8 (11, S, S) windows: -log D of each window with its
    middle frame replaced by `generator`'s prediction from its own neighbours (S^_t; the mean over
    D's patches, as Eq. 5's term). A float64 array; always fp32; the networks' modes are restored."""
    modes = generator.training, discriminator.training
    generator.eval()
    discriminator.eval()
    scores = []
    for x in _window_batches(windows, batch_size, device):
        logits = discriminator(with_middle(x, generator(split_window(x)[0]).to(x.dtype)))
        scores.append(d_loss_map(logits, real=True).cpu().double().numpy())
    generator.train(modes[0])
    discriminator.train(modes[1])
    return np.concatenate(scores) if scores else np.zeros(0)


PIXEL_CELLS = 7  # the pixel term's cell-max variant: the error map's mean in a 7 x 7 grid of cells (D's grid at 224)


def pixel_reductions(error: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, S) squared-error maps -> the mean per window (the generator term, g) and the largest
    mean over a PIXEL_CELLS x PIXEL_CELLS grid of cells (a local variant: one cell's error)."""
    cells = torch.nn.functional.adaptive_avg_pool2d(error[:, None], PIXEL_CELLS).flatten(1)
    return error.flatten(1).mean(dim=1), cells.max(dim=1).values


@torch.no_grad()
def pixel_terms(generator, windows: list, device, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The generator term of uint8 (11, S, S) windows, in both pixel_reductions: two float64
    arrays, the mean and the largest cell. Always fp32; the generator's mode is restored."""
    modes = generator.training
    generator.eval()
    columns: list[list[np.ndarray]] = [[], []]
    for x in _window_batches(windows, batch_size, device):
        neighbours, middle = split_window(x)
        error = (generator(neighbours).float() - middle.float()).pow(2)[:, 0]
        for column, values in zip(columns, pixel_reductions(error)):
            column.append(values.cpu().double().numpy())
    generator.train(modes)
    return tuple(np.concatenate(c) if c else np.zeros(0) for c in columns)


def validate_pixel(generator, clips: list[Clip], kinds: tuple[str, ...], device, batch_size: int = 8):
    """The generator term on held-out normal windows and on one pseudo-anomaly made from each (the
    windows of validate_pseudo): four float64 arrays, normal mean, normal cell max, pseudo mean,
    pseudo cell max (pixel_terms)."""
    windows = WindowSet(clips)
    normal = pixel_terms(generator, [windows[i] for i in range(len(windows))], device, batch_size)
    made = pixel_terms(generator, [w for w, _ in validation_pseudo_windows(clips, kinds)], device, batch_size)
    return (*normal, *made)


def ranking_auc(normal: np.ndarray, abnormal: np.ndarray) -> float:
    """P(an abnormal score > a normal one), ties counted half: the AUC of two score samples."""
    if not len(normal) or not len(abnormal):
        return float("nan")
    greater = (abnormal[:, None] > normal[None, :]).mean()
    ties = (abnormal[:, None] == normal[None, :]).mean()
    return float(greater + 0.5 * ties)
