"""The two STAN networks (Table 1 of the paper) and the ConvLSTM cell.

No I/O, no printing, no device choice: the caller decides where tensors live.
Tensors follow one layout, (B, T, C, H, W) in [-1, 1].

Choices the paper leaves open, made here (tests/test_model.py pins each one):
- Padding: every convolution is "same"-padded (k // 2) so the spatial sizes of Table 1 hold;
  stride-2 transposed convolutions use output_padding=1 so they exactly double the size.
- No ELU after a ConvLSTM: its output h = o * tanh(c) is already squashed; ELU follows every
  convolution and transposed convolution except the generator's last (tanh) and the
  discriminator's last (sigmoid).
- The combined ConvLSTM runs ONE step. Its initial state is the pairwise concatenation of the
  forward and backward final states (h_f|h_b, c_f|c_b), and its input is the concatenated hidden
  state h_f|h_b. With that input the parameter count is the paper's "about 2.3 M" (2,276,481);
  a zero input would give 1.69 M.
- The backward ConvLSTM reads t+5, t+4, ..., t+1 (farthest first), mirroring the forward one.
- The discriminator returns logits; D = sigmoid(logits). Losses use log-sigmoid, which is the
  same -log D of the paper but cannot overflow to inf.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

WINDOW = 11  # frames t-5 .. t+5
CONTEXT = WINDOW // 2  # 5 neighbours on each side


@dataclass(frozen=True)
class StanConfig:
    """Everything needed to rebuild both networks; stored inside every weights file."""

    image_size: int = 224
    encoder_channels: tuple[int, ...] = (16, 32, 64, 128)
    lstm_channels: int = 64  # each direction; the combined ConvLSTM has twice this
    decoder_channels: tuple[int, ...] = (64, 32, 16)
    disc_channels: tuple[int, ...] = (32, 64, 128, 256, 512)

    def __post_init__(self) -> None:
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if len(self.encoder_channels) != 4 or len(self.decoder_channels) != 3:
            raise ValueError("encoder_channels needs 4 entries and decoder_channels 3")
        if len(self.disc_channels) != 5:
            raise ValueError("disc_channels needs 5 entries")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StanConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


PAPER = StanConfig()
# A few thousand parameters at 32x32: same code paths as the paper's networks, for fast tests.
TINY = StanConfig(
    image_size=32,
    encoder_channels=(4, 4, 8, 8),
    lstm_channels=4,
    decoder_channels=(8, 4, 4),
    disc_channels=(4, 4, 8, 8, 8),
)
PRESETS = {"paper": PAPER, "tiny": TINY}


class ConvLSTMCell(nn.Module):
    """ConvLSTM (Shi et al. 2015) without peepholes: all four gates from one 3x3 convolution."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(
            in_channels + hidden_channels, 4 * hidden_channels, kernel_size, padding=kernel_size // 2
        )

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state  # (B, hid, h, w) each
        i, f, o, g = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)  # 4 x (B, hid, h, w)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def zero_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        z = x.new_zeros(b, self.hidden_channels, h, w)
        return z, z


def _conv(cin: int, cout: int, k: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def _deconv(cin: int, cout: int, k: int, stride: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=k // 2, output_padding=stride - 1)


class Generator(nn.Module):
    """Predicts frame t from frames t-5..t-1 and t+1..t+5 (Table 1, left)."""

    def __init__(self, config: StanConfig = PAPER) -> None:
        super().__init__()
        e1, e2, e3, e4 = config.encoder_channels
        d1, d2, d3 = config.decoder_channels
        hid = config.lstm_channels
        self.encoder = nn.ModuleList(
            [_conv(1, e1, 5, 2), _conv(e1, e2, 5, 2), _conv(e2, e3, 3, 2), _conv(e3, e4, 3, 1)]
        )
        self.forward_lstm = ConvLSTMCell(e4, hid)
        self.backward_lstm = ConvLSTMCell(e4, hid)
        self.combined_lstm = ConvLSTMCell(2 * hid, 2 * hid)
        self.decoder = nn.ModuleList(
            [_deconv(2 * hid, d1, 3, 1), _deconv(d1, d2, 3, 2), _deconv(d2, d3, 5, 2), _deconv(d3, 1, 5, 2)]
        )

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) frames -> (N, C, H/8, W/8) features. Shared by all windows a frame is in."""
        x = frames
        for conv in self.encoder:
            x = F.elu(conv(x))
        return x

    def predict_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 10, C, h, w) encoded neighbours, ordered t-5..t-1, t+1..t+5 -> (B, 1, H, W)."""
        before, after = features[:, :CONTEXT], features[:, CONTEXT:]  # (B, 5, C, h, w) each
        state_f = self.forward_lstm.zero_state(features[:, 0])
        for k in range(CONTEXT):  # t-5 .. t-1
            state_f = self.forward_lstm(before[:, k], state_f)
        state_b = self.backward_lstm.zero_state(features[:, 0])
        for k in reversed(range(CONTEXT)):  # t+5 .. t+1
            state_b = self.backward_lstm(after[:, k], state_b)
        h = torch.cat([state_f[0], state_b[0]], dim=1)  # (B, 2*hid, h, w)
        c = torch.cat([state_f[1], state_b[1]], dim=1)  # (B, 2*hid, h, w)
        x, _ = self.combined_lstm(h, (h, c))  # one step
        for deconv in self.decoder[:-1]:
            x = F.elu(deconv(x))
        return torch.tanh(self.decoder[-1](x))  # (B, 1, H, W)

    def forward(self, neighbours: torch.Tensor) -> torch.Tensor:
        """(B, 10, 1, H, W) neighbours -> (B, 1, H, W) predicted middle frame."""
        b, n = neighbours.shape[:2]
        features = self.encode(neighbours.flatten(0, 1))  # (B*10, C, h, w)
        features = features.unflatten(0, (b, n))  # (B, 10, C, h, w)
        return self.predict_from_features(features)


class Discriminator(nn.Module):
    """Judges an 11-frame sequence with 3D convolutions (Table 1, right); returns a logit map."""

    def __init__(self, config: StanConfig = PAPER) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = config.disc_channels
        s = (1, 2, 2)
        self.convs = nn.ModuleList(
            [
                nn.Conv3d(1, c1, (5, 5, 5), stride=s, padding=(0, 2, 2)),  # T 11 -> 7
                nn.Conv3d(c1, c2, (3, 5, 5), stride=s, padding=(0, 2, 2)),  # T 7 -> 5
                nn.Conv3d(c2, c3, (3, 3, 3), stride=s, padding=(0, 1, 1)),  # T 5 -> 3
                nn.Conv3d(c3, c4, (3, 3, 3), stride=s, padding=(0, 1, 1)),  # T 3 -> 1
                nn.Conv3d(c4, c5, (1, 3, 3), stride=s, padding=(0, 1, 1)),
                nn.Conv3d(c5, 1, (1, 3, 3), stride=1, padding=(0, 1, 1)),
            ]
        )

    def forward(self, sequence: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor] = F.elu) -> torch.Tensor:
        """(B, 11, 1, H, W) sequence -> (B, H/32, W/32) logits; D = sigmoid(logits).

        `activation` is ELU; guided backpropagation passes a version with a guided backward.
        """
        x = sequence.transpose(1, 2)  # (B, 1, 11, H, W): Conv3d wants channels before time
        for conv in self.convs[:-1]:
            x = activation(conv(x))
        return self.convs[-1](x)[:, 0, 0]  # (B, 1, 1, h, w) -> (B, h, w)


def split_window(window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 11, 1, H, W) window -> neighbours (B, 10, 1, H, W) and middle frame (B, 1, H, W)."""
    neighbours = torch.cat([window[:, :CONTEXT], window[:, CONTEXT + 1 :]], dim=1)
    return neighbours, window[:, CONTEXT]


def with_middle(window: torch.Tensor, middle: torch.Tensor) -> torch.Tensor:
    """The window with its middle frame replaced: the fake sequence S^_t."""
    return torch.cat([window[:, :CONTEXT], middle[:, None], window[:, CONTEXT + 1 :]], dim=1)


def d_patch_losses(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Per-patch -log D (real=True) or -log(1 - D) (real=False): (B, h, w) logits -> (B, h*w)."""
    logits = logits.float()
    target = logits if real else -logits
    return -F.logsigmoid(target).flatten(1)


def d_loss_map(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Per-patch -log D (real=True) or -log(1 - D) (real=False), reduced by the mean of the map.

    (B, h, w) logits -> (B,) losses. The mean over the 7x7 map is our choice for the paper's
    unstated reduction: each patch is one local real/fake verdict, weighted equally. (`stan eval`
    also reports the largest patch's term, a variant; docs/evaluation.md.)
    """
    return d_patch_losses(logits, real).mean(dim=1)


def patch_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d_loss_map with a label per patch: -log D where the label is 1 (real), -log(1 - D) where it
    is 0 (fake), averaged over the map. (B, h, w) logits and labels -> (B,) losses."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none").flatten(1).mean(dim=1)


def pixel_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's ||G(.) - X_t||_2, taken as the mean squared error per frame: (B,1,H,W) -> (B,).

    MSE rather than the L2 norm keeps the number independent of resolution. The norm is
    sqrt(N x MSE), N pixels: the same order of frames within a clip, but not a rescaling, so
    per-clip min-max and the gd sum differ; `stan eval` also reports the norm's AUCs
    (docs/evaluation.md).
    """
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
