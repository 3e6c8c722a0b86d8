"""
An independent, functional re-implementation of the official SFNet-R18 (v1) and SFNet-Lite-R18
(v2) eval forward, reading tensors by their *official* state-dict names (as defined in
lxtGH/SFSegNets@ba475ba network/sfnet_resnet.py and network/nn/operators.py). It lets the tests
check that a converted checkpoint makes our modules compute what the official network computes.
"""
import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                        sd[p + ".bias"], training=False, momentum=0.0, eps=1e-5)


def _conv(x, sd, p, stride=1, padding=0, dilation=1):
    return F.conv2d(x, sd[p + ".weight"], sd.get(p + ".bias"), stride, padding, dilation)


def _up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _warp(x, flow, size):
    h, w = size
    norm = torch.tensor([[[[w, h]]]], dtype=x.dtype)
    gy = torch.linspace(-1.0, 1.0, h).view(-1, 1).repeat(1, w)
    gx = torch.linspace(-1.0, 1.0, w).repeat(h, 1)
    grid = torch.cat((gx.unsqueeze(2), gy.unsqueeze(2)), 2).repeat(x.shape[0], 1, 1, 1)
    grid = grid + flow.permute(0, 2, 3, 1) / norm
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _resnet18_deep(x, sd):
    x = F.relu(_bn(_conv(x, sd, "layer0.0.0", 2, 1), sd, "layer0.0.1"))
    x = F.relu(_bn(_conv(x, sd, "layer0.0.3", 1, 1), sd, "layer0.0.4"))
    x = F.relu(_bn(_conv(x, sd, "layer0.0.6", 1, 1), sd, "layer0.1"))
    x = F.max_pool2d(x, 3, 2, 1)
    feats = []
    for layer, dilation in ((1, 1), (2, 1), (3, 2), (4, 4)):
        for b in range(2):
            p = f"layer{layer}.{b}"
            stride = 2 if (b == 0 and layer > 1) else 1
            out = F.relu(_bn(_conv(x, sd, p + ".conv1", stride, 1), sd, p + ".bn1"))
            out = _bn(_conv(out, sd, p + ".conv2", 1, dilation, dilation), sd, p + ".bn2")
            res = x
            if p + ".downsample.0.weight" in sd:
                res = _bn(_conv(x, sd, p + ".downsample.0", stride), sd, p + ".downsample.1")
            x = F.relu(out + res)
        feats.append(x)
    return feats


def _ppm(x, sd):
    size = x.shape[-2:]
    priors = [_up(_bn(_conv(F.adaptive_avg_pool2d(x, s), sd, f"head.ppm.stages.{i}.1"), sd,
                      f"head.ppm.stages.{i}.2"), size) for i, s in enumerate((1, 2, 3, 6))]
    y = _conv(torch.cat(priors + [x], 1), sd, "head.ppm.bottleneck.0")
    return F.relu(_bn(y, sd, "head.ppm.bottleneck.1"))


def _fpn_in(x, sd, i):
    return F.relu(_bn(_conv(x, sd, f"head.fpn_in.{i}.0"), sd, f"head.fpn_in.{i}.1"))


def _conv_last(x, sd):
    x = F.relu(_bn(_conv(x, sd, "head.conv_last.0.0", 1, 1), sd, "head.conv_last.0.1"))
    return _conv(x, sd, "head.conv_last.1")


def official_forward(image_uint8: torch.Tensor, sd, version: str) -> torch.Tensor:
    """(N, 3, H, W) RGB uint8 -> logits at (H, W), as the official eval forward."""
    x = (image_uint8.float() / 255.0 - MEAN) / STD
    x1, x2, x3, x4 = _resnet18_deep(x, sd)
    if version == "v1":
        f = _ppm(x4, sd)
        pyramid = [f]
        for i, low in reversed(list(enumerate([x1, x2, x3]))):
            lat = _fpn_in(low, sd, i)
            p = f"head.fpn_out_align.{i}"
            size = lat.shape[-2:]
            h = _up(_conv(f, sd, p + ".down_h"), size)
            flow = _conv(torch.cat([h, _conv(lat, sd, p + ".down_l")], 1), sd, p + ".flow_make", 1, 1)
            f = lat + _warp(f, flow, size)
            pyramid.append(F.relu(_bn(_conv(f, sd, f"head.fpn_out.{i}.0.0", 1, 1), sd,
                                      f"head.fpn_out.{i}.0.1")))
        pyramid.reverse()
        size = pyramid[0].shape[-2:]
        logits = _conv_last(torch.cat([pyramid[0]] + [_up(t, size) for t in pyramid[1:]], 1), sd)
    else:
        psp = _ppm(x4, sd)
        p2, p4 = _fpn_in(x1, sd, 0), _fpn_in(x3, sd, 1)
        size = p2.shape[-2:]
        p = "head.flow_align_module"
        h = _up(_conv(psp, sd, p + ".down_h"), size)
        l_red = _conv(p2, sd, p + ".down_l")
        flow = _conv(torch.cat([h, l_red], 1), sd, p + ".flow_make", 1, 1)
        h_warp = _warp(psp, flow[:, :2], size)
        l_warp = _warp(p2, flow[:, 2:], size)
        atten = torch.cat([h.mean(1, keepdim=True), p2.mean(1, keepdim=True),
                           h.max(1, keepdim=True)[0], p2.max(1, keepdim=True)[0]], 1)
        gate = torch.sigmoid(_conv(atten, sd, p + ".flow_gate.0", 1, 1))
        fused = h_warp * gate + l_warp * (1 - gate)
        logits = _conv_last(torch.cat([fused, _up(p4, size)], 1), sd)
    return _up(logits, image_uint8.shape[-2:])
