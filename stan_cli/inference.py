"""Running the networks on batches of windows: device and precision choice, per-window losses.

Shared by training (validation, calibration) and detection, so both measure the same thing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import StanError
from .model import CONTEXT, WINDOW, ConvLSTMCell, Discriminator, Generator, d_patch_losses, split_window

PRECISIONS = ("fp32", "bf16")
MAX_BATCH_SIZE = 4096  # windows per pass: far past where a larger batch is any faster
# Scoring memory per window of a batch (StreamScorer.push, fp32): 12.1 MB measured at 224 x 224
# with the paper's widths (peak RSS, batch 40 minus batch 8, one thread); other configs scaled.
_WINDOW_BYTES = 12.5e6
_MEMORY_SHARE = 0.8  # of what is free, what a batch may take


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StanError("--device cuda: no CUDA device is available here. Use --device cpu or auto.")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise StanError(f"--device {name}: unknown device. Use auto, cpu or cuda.")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise StanError(f"--device {name}: not a device name. Use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise StanError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return device


def _width(config) -> int:
    return sum(config.encoder_channels) + 4 * config.lstm_channels + sum(config.decoder_channels) + sum(config.disc_channels)


def batch_bytes(config, batch_size: int) -> float:
    """About how much memory scoring `batch_size` windows at once takes (activations, fp32)."""
    from .model import PAPER

    scale = (config.image_size / PAPER.image_size) ** 2 * _width(config) / _width(PAPER)
    return _WINDOW_BYTES * scale * batch_size


def free_memory(device: torch.device) -> int | None:
    """Bytes free for this process on `device`: the GPU's free memory; on the CPU the kernel's
    MemAvailable, or a container's memory limit less its use when that is lower. None when unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    free = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read().strip())
        if limit != "max":
            free = min(free if free is not None else 1 << 62, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return free


def check_batch_size(batch_size: int, config, device: torch.device) -> None:
    """Refuse a --batch-size whose activations would not fit in the memory free on `device`,
    naming the largest that would (an estimate, scaled from a measurement: see _WINDOW_BYTES)."""
    free = free_memory(device)
    need = batch_bytes(config, batch_size)
    if free is None or need <= _MEMORY_SHARE * free:
        return
    fits = int(_MEMORY_SHARE * free // batch_bytes(config, 1))
    where = "the GPU" if device.type == "cuda" else "this machine"
    advice = f"Use --batch-size {fits} or less" if fits >= 1 else "Free some memory (or use another device)"
    raise StanError(
        f"--batch-size {batch_size}: scoring that many windows at once needs about {_size(need)}, and "
        f"{where} has {_size(free)} free. {advice}."
    )


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or CUDA for 'bf16'; nothing for 'fp32'."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise StanError(f"--precision {precision}: unknown precision. Use one of {', '.join(PRECISIONS)}.")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without it, bf16 is emulated."""
    try:  # private helpers, present since torch 2.1; oneDNN's own check also says yes on AVX-512 without BF16
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def precision_warning(device: torch.device, precision: str) -> str | None:
    """A warning for bf16 on a CPU that emulates it (measured ~10x slower than fp32 on an AVX2 EPYC)."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return (
            "--precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so it is emulated "
            "and much slower than fp32 here. Use --precision fp32."
        )
    return None


@dataclass
class WindowScores:
    prediction: torch.Tensor  # (B, 1, S, S) generated middle frames, float32
    error: torch.Tensor  # (B, S, S) per-pixel squared error, float32: the pixel-loss map
    pixel: torch.Tensor  # (B,) mean squared error per window: the generator term
    d: torch.Tensor  # (B,) -log D(S_t), mean over the patch map: the discriminator term
    d_max: torch.Tensor  # (B,) the largest patch's -log D (stan eval's patch-max variant)
    guided: torch.Tensor | None = None  # (B, S, S) guided-backprop map, when asked for


def _scores(prediction: torch.Tensor, middle: torch.Tensor, logits: torch.Tensor) -> WindowScores:
    """Generated middle frames, the real ones and D's logits -> the per-window terms."""
    error = (prediction - middle.float()).pow(2)[:, 0]  # (B, S, S)
    patches = d_patch_losses(logits, real=True)  # (B, h*w)
    return WindowScores(prediction, error, error.flatten(1).mean(dim=1), patches.mean(dim=1), patches.max(dim=1).values)


@torch.no_grad()
def score_windows(
    generator: Generator,
    discriminator: Discriminator,
    windows: torch.Tensor,
    precision: str = "fp32",
) -> WindowScores:
    """(B, 11, 1, S, S) real windows in [-1, 1] -> both networks' per-window losses."""
    neighbours, middle = split_window(windows)
    with autocast(windows.device, precision):
        prediction = generator(neighbours).float()
        logits = discriminator(windows)
    return _scores(prediction, middle, logits)


class _GuidedELU(torch.autograd.Function):
    """ELU forward; backward lets only positive gradients through (guided backpropagation).

    Springenberg et al. define guided backprop for ReLU: the gradient passes where the input was
    positive AND the incoming gradient is positive. ELU has no zero region, so the first mask
    becomes ELU's own derivative (1 for x > 0, exp(x) below); the guided part is unchanged:
    grad_in = max(grad_out, 0) * elu'(x).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.elu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        local = torch.where(x > 0, torch.ones_like(x), torch.exp(x.clamp(max=0)))
        return grad.clamp(min=0) * local


def guided_elu(x: torch.Tensor) -> torch.Tensor:
    return _GuidedELU.apply(x)


def guided_backprop(discriminator: Discriminator, windows: torch.Tensor) -> torch.Tensor:
    """Where in the real sequence the discriminator looks: (B, 11, 1, S, S) -> (B, S, S).

    The paper (Fig. 3d) backpropagates the discriminator's output; here the target is the
    window's `d` score, -log D(S_t) averaged over D's patches, so that the guided pass (which
    keeps only positive gradients) follows what makes the window abnormal, not what makes it
    look real (docs/explain.md: the gradient of D pointed away from the anomaly). Its gradient
    with respect to the real input sequence, through guided ELUs, is taken in magnitude and
    summed over the 11 frames. Runs in fp32 with the discriminator's parameters frozen (no
    weight gradients).
    """
    was_training = discriminator.training
    discriminator.eval()
    flags = [p.requires_grad for p in discriminator.parameters()]
    discriminator.requires_grad_(False)
    try:
        with torch.enable_grad():
            x = windows.detach().float().requires_grad_(True)
            target = d_patch_losses(discriminator(x, activation=guided_elu), real=True).mean(dim=1).sum()
            (grad,) = torch.autograd.grad(target, x)
    finally:
        for p, flag in zip(discriminator.parameters(), flags):
            p.requires_grad_(flag)
        discriminator.train(was_training)
    return grad.abs().sum(dim=1)[:, 0]  # (B, 11, 1, S, S) -> (B, S, S)


GUIDED_LAYER = 2  # detect's guided maps stop at the input of the discriminator's third convolution (stride 4)


def guided_from_activations(convs, pre: list[torch.Tensor], frame_size: tuple[int, int]) -> torch.Tensor:
    """guided_backprop's backward pass by hand, from the activations of a forward pass: (B, S, S).

    pre: the pre-activations (each convolution's output, before its ELU; the last: the logits) of
    layers first..last over B windows, (B, C, T, h, w) float32, best channels-last (the memory
    format the transposed convolutions work in here). The gradient of the d score,
    mean(-log sigmoid(logits)) = mean(softplus(-logits)), goes back through each convolution (its
    transpose) and each guided ELU, max(grad, 0) * elu'(z) with elu'(z) = exp(min(z, 0)), down to
    the input of layer `first`; |gradient| is summed over that input's channels and time steps and
    brought to frame_size (bilinear).

    first = 0 gives guided_backprop's map. detect stops at GUIDED_LAYER: the two first layers'
    backward passes, at 112 and 56 pixels, are 85 % of the work, and the map they would add to is
    the same at 8-pixel resolution (docs/speed.md: correlation 0.99 on Ped2 at 28 x 28); what is
    left out is texture inside 4 x 4-pixel cells.
    """
    grad = _d_score_gradient(convs, pre, frame_size, len(convs) - len(pre), guided=True)  # (B, C, T, h, w)
    heat = grad.abs_().sum(dim=(1, 2))  # (B, C, T, h, w) -> (B, h, w)
    if heat.shape[-2:] != tuple(frame_size):
        heat = F.interpolate(heat[:, None], size=tuple(frame_size), mode="bilinear", align_corners=False)[:, 0]
    return heat  # (B, S, S)


def _d_score_gradient(convs, pre: list[torch.Tensor], frame_size: tuple[int, int], stop: int, guided: bool) -> torch.Tensor:
    """The gradient of the d score, mean(softplus(-logits)), at the input of convolution `stop`, by
    hand from the pre-activations of layers first..last (first <= stop): back through each
    convolution (its transpose) and, between them, each ELU: its derivative elu'(z) = exp(min(z, 0)),
    after max(grad, 0) where `guided` (guided backpropagation). (B, C, T, h, w)."""
    first = len(convs) - len(pre)
    sizes = [tuple(frame_size)]  # each layer's input size
    for conv in convs[:-1]:
        sizes.append(tuple((n + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1 for n in sizes[-1]))
    # channels-last takes oneDNN's path for the transposed convolutions: 2x faster on a CPU (measured, layer 2)
    cl = torch.channels_last_3d
    grad = torch.sigmoid(-pre[-1]).div_(-pre[-1][0].numel())  # d mean(softplus(-logits)) / d logits: (B, 1, 1, h, w)
    for layer in range(len(convs) - 1, stop - 1, -1):
        conv = convs[layer]
        pad = tuple(n - ((m - 1) * conv.stride[1] - 2 * conv.padding[1] + conv.kernel_size[1])
                    for n, m in zip(sizes[layer], grad.shape[-2:]))  # a stride-2 layer's lost last row
        grad = F.conv_transpose3d(grad.contiguous(memory_format=cl), conv.weight.contiguous(memory_format=cl), None,
                                  conv.stride, conv.padding, (0, *pad))  # at the layer's input
        if layer > stop:  # through the previous layer's ELU
            if guided:
                grad.clamp_(min=0)
            grad.mul_(pre[layer - 1 - first].clamp(max=0).exp_())
    return grad


GRADCAM_LAYER = 3  # Grad-CAM's layer: the input of the discriminator's fourth convolution (28 x 28 at 224)


def gradcam_from_activations(convs, pre: list[torch.Tensor], frame_size: tuple[int, int]) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017) of the window's `d` score at the input A of
    convolution GRADCAM_LAYER, from guided_from_activations' pre-activations (their first layer at
    most GRADCAM_LAYER - 1): (B, S, S), >= 0. The plain gradient of mean(softplus(-logits)) (ELU's
    own derivative, nothing cut) goes back to A; each of A's channels is weighted by its gradient's
    mean over time and space; the map is that weighted sum of channels, its negative part cut,
    summed over A's time steps and brought to frame_size (bilinear): where in the frame the
    discriminator's evidence for "abnormal" is."""
    first = len(convs) - len(pre)
    if first > GRADCAM_LAYER - 1:
        raise ValueError(f"Grad-CAM needs the activations from layer {GRADCAM_LAYER - 1} on; these start at {first}")
    grad = _d_score_gradient(convs, pre, frame_size, GRADCAM_LAYER, guided=False)
    a = F.elu(pre[GRADCAM_LAYER - 1 - first])  # (B, C, T, h, w)
    cam = (grad.mean(dim=(2, 3, 4), keepdim=True) * a).sum(dim=1).clamp_(min=0).sum(dim=1)  # (B, h, w)
    return F.interpolate(cam[:, None], size=tuple(frame_size), mode="bilinear", align_corners=False)[:, 0]


def guided_gradcam(convs, pre: list[torch.Tensor], frame_size: tuple[int, int]) -> torch.Tensor:
    """The map stan draws (detect's overlay, explain's panel d) since 0.12.0: (B, S, S), >= 0.

    Guided Grad-CAM (Selvaraju et al.): the guided-backprop map (guided_from_activations) kept where
    Grad-CAM puts the discriminator's evidence (gradcam_from_activations), their product smoothed
    by smooth_guided, and its square root, so that the overlay's colour scale is that of one
    gradient (the maximum, where the map points, is the product's). Chosen on pseudo-anomalies of
    held-out training clips, by a rule written before (docs/discriminator.md, "Where in time the
    guided map looks"): with the discriminator of `ped2-2026-12-07c` its maximum falls inside a
    made-up local anomaly 93.8 % of the time, against 81.5 % for the guided map alone.
    """
    heat = guided_from_activations(convs, pre, frame_size) * gradcam_from_activations(convs, pre, frame_size)
    return smooth_guided(heat).clamp_(min=0).sqrt_()


def discriminator_activations(discriminator: Discriminator, windows: torch.Tensor, first: int) -> list[torch.Tensor]:
    """The pre-activations (each convolution's output, before its ELU) of layers first..last for
    (B, 11, 1, S, S) windows, by one forward pass: what guided_gradcam takes."""
    with torch.no_grad():
        h, pre = windows.float().transpose(1, 2), []  # (B, 1, 11, S, S)
        for i, conv in enumerate(discriminator.convs):
            z = conv(h)
            if i >= first:
                pre.append(z)
            h = F.elu(z)
    return pre


def discriminator_map(discriminator: Discriminator, windows: torch.Tensor, first: int = GUIDED_LAYER) -> torch.Tensor:
    """guided_gradcam for (B, 11, 1, S, S) windows from one forward pass of the discriminator, the
    guided part cut at the input of layer `first` (GUIDED_LAYER: detect's overlay): (B, S, S)."""
    with torch.no_grad():
        return guided_gradcam(discriminator.convs, discriminator_activations(discriminator, windows, first),
                              tuple(windows.shape[-2:]))


GUIDED_CELL = 4  # pixels of the frame per cell of smooth_guided's map: the cut at GUIDED_LAYER (56 x 56 at 224)
_BINOMIAL = torch.tensor([1.0, 2.0, 1.0])
_BINOMIAL = (_BINOMIAL[:, None] * _BINOMIAL[None, :] / 16)[None, None]  # (1, 1, 3, 3), sums to 1


def smooth_guided(heat: torch.Tensor) -> torch.Tensor:
    """The guided map as stan draws it: (B, S, S) -> (B, S, S).

    The transposes of the discriminator's stride-2 convolutions leave a dotted texture (every other
    cell of the 56 x 56 cut cold, 8 pixels a period at 224), and under it a single hot cell, not the
    region around it, decides where the map's maximum is. The map is averaged in cells of
    GUIDED_CELL pixels, filtered by a 3 x 3 binomial kernel there (which removes that period and
    keeps the heat where it is) and brought back to the frame size (bilinear). Measured on the 12
    Ped2 test clips (docs/discriminator.md): pixel-level AUC 4.1 % -> 17.1 %, hit rate 15.0 % -> 16.5 %.
    """
    size = tuple(heat.shape[-2:])
    cells = F.avg_pool2d(heat[:, None].float(), GUIDED_CELL)
    smooth = F.conv2d(F.pad(cells, (1, 1, 1, 1), mode="replicate"), _BINOMIAL.to(cells.device))
    return F.interpolate(smooth, size=size, mode="bilinear", align_corners=False)[:, 0]


def _split_gates(cell: ConvLSTMCell, in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A ConvLSTM's gate convolution over cat([x, h]) as its x half and its h half (weights)."""
    w = cell.gates.weight.detach()  # (4*hid, in + hid, k, k)
    return w[:, :in_channels], w[:, in_channels:].contiguous()


def _lstm_update(gates: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """ConvLSTMCell.forward after its convolution; c None stands for the zero state."""
    i, f, o, g = gates.chunk(4, dim=1)  # 4 x (B, hid, h, w)
    c = torch.sigmoid(i) * torch.tanh(g) if c is None else torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class StreamScorer:
    """Scores every window of a frame stream, computing once what overlapping windows share.

    The numbers are score_windows' on each window (up to float summation order); the work is
    about a third (the FLOPs per frame: 6.1 G instead of 18.4 G at 224 x 224):
    - the generator's encoder, and the x half of both ConvLSTMs' gate convolutions (conv over
      cat([x, h]) = conv_x(x) + conv_h(h)), depend on one frame only: once per frame instead of
      once for each of the 10 windows the frame is a neighbour in;
    - the first step of each ConvLSTM starts from the zero state, so it has no h half;
    - the combined ConvLSTM's input is its own initial h, so its two weight halves are summed;
    - the discriminator pads and strides nothing in time: over a long sequence it is a temporal
      convolution whose output t is the verdict on the window ending at t. Each layer keeps the
      last k - 1 steps of its input, so each intermediate is computed once per frame instead of
      once per window (7, 5 and 3 times fewer in the first three layers).
    Feed frames in order with push(); windows come out in order of their middle frame. One
    scorer per stream, built after the model has its final weights and device: it keeps
    rearranged copies of the ConvLSTM weights.
    """

    def __init__(self, generator: Generator, discriminator: Discriminator, precision: str = "fp32",
                 guided_layer: int | None = None) -> None:
        if any(conv.stride[0] != 1 or conv.padding[0] != 0 for conv in discriminator.convs):
            raise ValueError("StreamScorer needs a discriminator with temporal stride 1 and no temporal padding")
        self.generator, self.discriminator, self.precision = generator, discriminator, precision
        g = generator
        c_in = g.encoder[-1].out_channels
        wf_x, self._wf_h = _split_gates(g.forward_lstm, c_in)
        wb_x, self._wb_h = _split_gates(g.backward_lstm, c_in)
        self._w_x = torch.cat([wf_x, wb_x])  # (2 * 4*hid, C, k, k): both cells' x halves in one conv
        self._b_x = torch.cat([g.forward_lstm.gates.bias, g.backward_lstm.gates.bias]).detach()
        wc_x, wc_h = _split_gates(g.combined_lstm, g.combined_lstm.hidden_channels)
        self._wc = wc_x + wc_h
        self._bc = g.combined_lstm.gates.bias.detach()
        self._pad = g.forward_lstm.gates.padding
        self._split = self._b_x.numel() // 2
        self.frames: torch.Tensor | None = None  # (10 + m, 1, S, S) the last push's windows' frames
        self._gates_x: torch.Tensor | None = None  # (<= 10, 2 * 4*hid, h, w) per frame, kept for the next push
        self._d_tails: list[torch.Tensor | None] = [None] * len(discriminator.convs)
        # for guided(): the pre-activations (a conv's output, before ELU) of the discriminator's layers from
        # guided_layer on that the last push's windows span, time first, channels last: (m + span - 1, h, w, C)
        if guided_layer is not None and not 0 <= guided_layer <= GRADCAM_LAYER - 1:
            raise ValueError(f"guided_layer {guided_layer}: the maps need the activations from layer {GRADCAM_LAYER - 1} "
                             f"on (0 to {GRADCAM_LAYER - 1})")
        self.guided_layer = guided_layer
        self._d_pre: list[torch.Tensor | None] = [None] * len(discriminator.convs)
        self._spans = []  # each layer's steps in one window: 7, 5, 3, 1, 1, 1
        span = WINDOW
        for conv in discriminator.convs:
            span -= conv.kernel_size[0] - 1
            self._spans.append(span)

    @torch.inference_mode()
    def push(self, frames: torch.Tensor) -> WindowScores | None:
        """(n, 1, S, S) next frames in [-1, 1] -> the scores of the windows they complete, or None."""
        with autocast(frames.device, self.precision):
            gates_x = F.conv2d(self.generator.encode(frames), self._w_x, self._b_x, padding=self._pad)
            logits = self._discriminate(frames)
        keep = WINDOW - 1
        self.frames = frames if self.frames is None else torch.cat([self.frames[-keep:], frames])
        self._gates_x = gates_x if self._gates_x is None else torch.cat([self._gates_x[-keep:], gates_x])
        m = len(self.frames) - keep  # windows completed by this push
        if m <= 0:
            return None
        if self.guided_layer is not None:
            self._d_pre = [pre if pre is None else pre[-(m + span - 1) :] for pre, span in zip(self._d_pre, self._spans)]
        with autocast(frames.device, self.precision):
            prediction = self._predict(self._gates_x, m).float()
        return _scores(prediction, self.frames[CONTEXT : CONTEXT + m], logits)

    def _predict(self, gates_x: torch.Tensor, m: int) -> torch.Tensor:
        """Generator.predict_from_features for the m windows over gates_x (m + 10 frames)."""
        xf, xb = gates_x[:, : self._split], gates_x[:, self._split :]  # (m + 10, 4*hid, h, w) each
        state_f = (None, None)
        for k in range(CONTEXT):  # t-5 .. t-1
            state_f = self._step(xf[k : k + m], self._wf_h, state_f)
        state_b = (None, None)
        for k in reversed(range(CONTEXT)):  # t+5 .. t+1
            state_b = self._step(xb[CONTEXT + 1 + k : CONTEXT + 1 + k + m], self._wb_h, state_b)
        h = torch.cat([state_f[0], state_b[0]], dim=1)  # (m, 2*hid, h, w)
        c = torch.cat([state_f[1], state_b[1]], dim=1)  # (m, 2*hid, h, w)
        x, _ = _lstm_update(F.conv2d(h, self._wc, self._bc, padding=self._pad), c)
        for deconv in self.generator.decoder[:-1]:
            x = F.elu(deconv(x))
        return torch.tanh(self.generator.decoder[-1](x))  # (m, 1, S, S)

    def _step(self, gates_x, w_h, state):
        h, c = state
        gates = gates_x if h is None else gates_x + F.conv2d(h, w_h, padding=self._pad)
        return _lstm_update(gates, c)

    def _discriminate(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, 1, S, S) next frames -> (m, h, w) logits of the windows they complete (m may be 0)."""
        x = frames.transpose(0, 1)[None]  # (1, 1, n, S, S): one long sequence, time as Conv3d's depth
        convs = self.discriminator.convs
        for layer, conv in enumerate(convs):
            tail = self._d_tails[layer]
            if tail is not None:
                x = torch.cat([tail, x], dim=2)
            k = conv.kernel_size[0]
            if k > 1:
                self._d_tails[layer] = x[:, :, -(k - 1) :].clone()
            if x.shape[2] < k:
                return x.new_zeros((0, *x.shape[-2:]))  # not yet a full window; shape is unused
            x = conv(x)
            if self.guided_layer is not None and layer >= self.guided_layer:
                pre = x[0].permute(1, 2, 3, 0)  # (1, C, n, h, w) -> (n, h, w, C): channels last, as guided() uses it
                kept = self._d_pre[layer]
                self._d_pre[layer] = pre if kept is None else torch.cat([kept, pre])
            if layer < len(convs) - 1:
                x = F.elu(x)
        return x[0, 0]  # (1, 1, m, h, w) -> (m, h, w)

    @torch.inference_mode()
    def guided(self, windows: range) -> torch.Tensor:
        """The maps stan draws (guided_gradcam, the guided part stopped at the input of layer
        guided_layer) of some windows of the last push (0: its first): (len, S, S) float32. The
        forward pass is the push's own, so only the backward passes are left to do, for all of them
        at once."""
        if self.guided_layer is None:
            raise ValueError("StreamScorer.guided needs a scorer made with guided_layer")
        starts = torch.as_tensor(list(windows), device=self.frames.device)[:, None]  # (B, 1)
        pre = [  # (B, span, h, w, C) -> (B, C, span, h, w), in memory channels-last
            buf[starts + torch.arange(span, device=buf.device)].float().permute(0, 4, 1, 2, 3)
            for buf, span in zip(self._d_pre[self.guided_layer :], self._spans[self.guided_layer :])
        ]
        return guided_gradcam(self.discriminator.convs, pre, tuple(self.frames.shape[-2:]))
