"""Factories (`model.factory`) that build the modules whose pretrained state_dicts the zoo's wheels ship.

The architectures are copied from each package (named per class) because the packages' own modules
cannot be imported here without their other dependencies (torchvision, torchaudio, webrtcvad, ssg);
the weights are the packages' own, loaded with strict=True, so a wrong copy fails loudly.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F


# ---------------------------------------------------------------- facenet-pytorch 2.6.0 (models/mtcnn.py)
class PNet(nn.Module):
    """MTCNN proposal network: 12x12 (or larger, fully convolutional) face windows."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x):
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        a = self.softmax4_1(self.conv4_1(x))
        b = self.conv4_2(x)
        return b, a


class RNet(nn.Module):
    """MTCNN refine network: 24x24 face crops."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        a = self.softmax5_1(self.dense5_1(x))
        b = self.dense5_2(x)
        return b, a


class ONet(nn.Module):
    """MTCNN output network: 48x48 face crops -> box, 5 landmarks, face probability."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        a = self.softmax6_1(self.dense6_1(x))
        b = self.dense6_2(x)
        c = self.dense6_3(x)
        return b, c, a


def facenet_pnet() -> nn.Module:
    return PNet()


def facenet_rnet() -> nn.Module:
    return RNet()


def facenet_onet() -> nn.Module:
    return ONet()


# ---------------------------------------------------------------- resemblyzer 0.1.4 (voice_encoder.py)
class VoiceEncoder(nn.Module):
    """GE2E speaker encoder: 40-channel mel frames -> a unit-norm 256-d speaker embedding."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        self.relu = nn.ReLU()
        self.similarity_weight = nn.Parameter(torch.tensor([10.0]))
        self.similarity_bias = nn.Parameter(torch.tensor([-5.0]))

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        embeds_raw = self.relu(self.linear(hidden[-1]))
        return embeds_raw / torch.norm(embeds_raw, dim=1, keepdim=True)


def resemblyzer_encoder() -> nn.Module:
    return VoiceEncoder()


# ---------------------------------------------------------------- attacut 1.0.6 (models/seq_sy_ch_conv_concat.py)
class ConvolutionBatchNorm(nn.Module):
    def __init__(self, channels, filters, kernel_size, stride=1, dilation=1):
        super().__init__()
        padding = kernel_size // 2
        padding += padding * (dilation - 1)
        self.conv = nn.Conv1d(channels, filters, kernel_size, stride=stride, dilation=dilation, padding=padding)
        self.bn = nn.BatchNorm1d(filters)

    def forward(self, x):
        return self.bn(self.conv(x))


class AttaCutSC(nn.Module):
    """AttaCut-SC Thai word segmenter (params embc:32|embs:16|conv:64|l1:32): char and syllable ids
    [batch, 2, chars] -> one boundary logit per character, flattened over the batch as the package does.
    The package's forward takes (x, seq_lengths) and ignores seq_lengths; this one takes x alone."""

    def __init__(self, no_chars=139, no_syllables=6227, embc=32, embs=16, conv=64, l1=32):
        super().__init__()
        self.ch_embeddings = nn.Embedding(no_chars, embc, padding_idx=0)
        self.sy_embeddings = nn.Embedding(no_syllables, embs, padding_idx=0)
        emb_dim = embc + embs
        self.dropout = nn.Dropout(p=0.0)
        self.conv1 = ConvolutionBatchNorm(emb_dim, conv, 3)
        self.conv2 = ConvolutionBatchNorm(emb_dim, conv, 5, dilation=3)
        self.conv3 = ConvolutionBatchNorm(emb_dim, conv, 9, dilation=2)
        self.linear1 = nn.Linear(conv, l1)
        self.linear2 = nn.Linear(l1, 1)

    def forward(self, x):
        x_char, x_syllable = x[:, 0, :], x[:, 1, :]
        embedding = torch.cat((self.ch_embeddings(x_char), self.sy_embeddings(x_syllable)), dim=2)
        embedding = embedding.permute(0, 2, 1)
        conv1 = self.dropout(self.conv1(embedding).permute(0, 2, 1))
        conv2 = self.dropout(self.conv2(embedding).permute(0, 2, 1))
        conv3 = self.dropout(self.conv3(embedding).permute(0, 2, 1))
        out, _ = torch.max(torch.stack((conv1, conv2, conv3), 3), 3)
        out = self.linear2(F.relu(self.linear1(out)))
        return out.view(-1)


def attacut_sc() -> nn.Module:
    return AttaCutSC()


# ---------------------------------------------------------------- pesto-pitch 2.0.1 (model.py)
class ToeplitzLinear(nn.Conv1d):
    def __init__(self, in_features, out_features):
        super().__init__(in_channels=1, out_channels=1, kernel_size=in_features + out_features - 1,
                         padding=out_features - 1, bias=False)

    def forward(self, input):
        return super().forward(input.unsqueeze(-2)).squeeze(-2)


class Resnet1d(nn.Module):
    """PESTO's encoder: one CQT frame [batch, 1, 264 bins] -> a 384-bin pitch distribution."""

    def __init__(self, n_chan_input=1, n_chan_layers=(40, 30, 30, 10, 3), n_prefilt_layers=2,
                 prefilt_kernel_size=15, residual=True, n_bins_in=264, output_dim=384, a_lrelu=0.3):
        super().__init__()
        act = partial(nn.LeakyReLU, negative_slope=a_lrelu)
        n_ch = list(n_chan_layers)
        self.layernorm = nn.LayerNorm(normalized_shape=[n_chan_input, n_bins_in])
        pad = prefilt_kernel_size // 2
        self.conv1 = nn.Sequential(nn.Conv1d(n_chan_input, n_ch[0], prefilt_kernel_size, padding=pad), act(),
                                   nn.Dropout(p=0.2))
        self.n_prefilt_layers = n_prefilt_layers
        # The checkpoint holds each prefilter as a bare Conv1d (prefilt_layers.0.weight), where pesto
        # 2.0.1's code wraps it in a Sequential and so loads it with strict=False, leaving it random;
        # here the conv keeps its trained weights and the activation follows it.
        self.prefilt_layers = nn.ModuleList([nn.Conv1d(n_ch[0], n_ch[0], prefilt_kernel_size, padding=pad)
                                             for _ in range(n_prefilt_layers - 1)])
        self.act = act()
        self.residual = residual
        layers = []
        for i in range(len(n_ch) - 1):
            layers.extend([nn.Conv1d(n_ch[i], n_ch[i + 1], kernel_size=1), act(), nn.Dropout(p=0.2)])
        self.conv_layers = nn.Sequential(*layers)
        self.flatten = nn.Flatten(start_dim=1)
        self.fc = ToeplitzLinear(n_bins_in * n_ch[-1], output_dim)
        self.final_norm = nn.Softmax(dim=-1)

    def forward(self, x):
        x = self.conv1(self.layernorm(x))
        for layer in self.prefilt_layers:
            x = self.act(layer(x)) + x if self.residual else self.act(layer(x))
        x = self.flatten(self.conv_layers(x))
        return self.final_norm(self.fc(x))


class PestoEncoder(nn.Module):
    """The Lightning checkpoint's module: the encoder plus the `shift` buffer used to read pitch off."""

    def __init__(self):
        super().__init__()
        self.encoder = Resnet1d()
        self.register_buffer("shift", torch.zeros((), dtype=torch.float))

    def forward(self, x):
        return self.encoder(x)


def pesto_mir1k() -> nn.Module:
    return PestoEncoder()


# ---------------------------------------------------------------- lpips 0.1.4 (pretrained_networks / lpips.py)
class NetLinLayer(nn.Module):
    def __init__(self, chn_in):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(chn_in, 1, 1, stride=1, padding=0, bias=False))

    def forward(self, x):
        return self.model(x)


class LpipsAlexHead(nn.Module):
    """LPIPS v0.1's learned head over AlexNet's five relu stages: each input is the squared difference
    of the two images' unit-normalized features at one stage; the output is the LPIPS distance."""

    def __init__(self):
        super().__init__()
        for i, chn in enumerate((64, 192, 384, 256, 256)):
            setattr(self, f"lin{i}", NetLinLayer(chn))

    def forward(self, d0, d1, d2, d3, d4):
        total = 0
        for i, d in enumerate((d0, d1, d2, d3, d4)):
            total = total + getattr(self, f"lin{i}")(d).mean([2, 3], keepdim=True)
        return total


def lpips_alex() -> nn.Module:
    return LpipsAlexHead()
