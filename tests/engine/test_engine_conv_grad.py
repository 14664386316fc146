"""dtkd.engine.conv_grad: the input gradient as a forward convolution, checked against autograd's
own in float64 (equal to rounding), with every layer shape X3D and the zoo use."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dtkd.engine.conv_grad import FastGradConv3d, covered, input_grad, restore_conv_grad, transposed_kernel, use_fast_conv_grad

# (in, out, kernel, stride, padding, groups, input THW): depthwise, pointwise, strided, the stem's
# (1,3,3)/2, X3D's temporal (5,1,1) depthwise, grouped, odd sizes where the stride leaves a remainder.
CASES = [
    (6, 6, (3, 3, 3), (1, 1, 1), (1, 1, 1), 6, (4, 5, 5)),
    (6, 6, (3, 3, 3), (1, 2, 2), (1, 1, 1), 6, (4, 5, 6)),
    (4, 7, (1, 1, 1), (1, 1, 1), (0, 0, 0), 1, (3, 4, 4)),
    (4, 7, (1, 1, 1), (1, 2, 2), (0, 0, 0), 1, (3, 5, 4)),
    (3, 5, (1, 3, 3), (1, 2, 2), (0, 1, 1), 1, (2, 7, 7)),
    (4, 4, (5, 1, 1), (1, 1, 1), (2, 0, 0), 4, (6, 3, 3)),
    (6, 4, (3, 3, 3), (2, 1, 2), (1, 0, 1), 2, (5, 4, 6)),
    (2, 3, (2, 3, 3), (2, 2, 2), (0, 1, 1), 1, (5, 6, 7)),
]


@pytest.mark.parametrize("c_in,c_out,k,stride,pad,groups,thw", CASES)
def test_input_and_weight_gradients_match_autograd(c_in, c_out, k, stride, pad, groups, thw):
    torch.manual_seed(0)
    x = torch.randn(2, c_in, *thw, dtype=torch.float64, requires_grad=True)
    ref_conv = nn.Conv3d(c_in, c_out, k, stride, pad, groups=groups, bias=True).double()
    fast_conv = copy.deepcopy(ref_conv)
    assert use_fast_conv_grad(fast_conv) == 1 and covered(fast_conv)
    y_ref = ref_conv(x)
    x2 = x.detach().clone().requires_grad_()
    y = fast_conv(x2)
    assert torch.equal(y, y_ref)  # same forward call: bit-identical
    g = torch.randn_like(y)
    y_ref.backward(g)
    y.backward(g)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast_conv.weight.grad, ref_conv.weight.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast_conv.bias.grad, ref_conv.bias.grad, rtol=1e-10, atol=1e-10)


def test_transposed_kernel_by_hand():
    # groups=2, out 2, in 4: w[o, i, t] -> wt[g*2 + i, o_in_group, flipped t]
    w = torch.arange(2 * 2 * 2, dtype=torch.float32).reshape(2, 2, 2, 1, 1)
    wt = transposed_kernel(w, groups=2)
    assert wt.shape == (4, 1, 2, 1, 1)
    # group 0: out channel 0 reads in 0,1; group 1: out channel 1 reads in 2,3; time flipped
    assert wt[:, 0, :, 0, 0].tolist() == [[1, 0], [3, 2], [5, 4], [7, 6]]


def test_stride_one_input_grad_is_flipped_correlation_by_hand():
    # 1-D in time: x of length 3, kernel [1, 2], padding 0 -> y = [x0 + 2 x1, x1 + 2 x2];
    # dL/dx for g = [1, 10] is [1, 2 + 10, 20].
    w = torch.tensor([1.0, 2.0]).reshape(1, 1, 2, 1, 1)
    g = torch.tensor([1.0, 10.0]).reshape(1, 1, 2, 1, 1)
    gx = input_grad(g, w, (1, 1, 3, 1, 1), (1, 1, 1), (0, 0, 0), 1)
    assert gx.flatten().tolist() == [1.0, 12.0, 20.0]


def test_whole_model_gradients_and_state_dict_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 8, (1, 3, 3), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(8), nn.ReLU(),
                          nn.Conv3d(8, 8, 3, padding=1, groups=8), nn.Conv3d(8, 4, 1), nn.AdaptiveAvgPool3d(1),
                          nn.Flatten()).double()
    fast = copy.deepcopy(model)
    assert use_fast_conv_grad(fast) == 3
    assert list(fast.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 4, 9, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last_3d)
    model(x).square().sum().backward()
    fast(x).square().sum().backward()
    for p, q in zip(model.parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-10)
    restore_conv_grad(fast)
    assert not any(isinstance(m, FastGradConv3d) for m in fast.modules())


def test_uncovered_layers_keep_pytorchs_path():
    dilated = nn.Conv3d(2, 2, 3, padding=2, dilation=2)
    same = nn.Conv3d(2, 2, 3, padding="same")
    reflect = nn.Conv3d(2, 2, 3, padding=1, padding_mode="reflect")
    for conv in (dilated, same, reflect):
        ref = copy.deepcopy(conv)
        use_fast_conv_grad(conv)
        assert not covered(conv)
        x = torch.randn(1, 2, 4, 5, 5)
        conv(x).sum().backward()
        ref(x).sum().backward()
        assert torch.equal(conv.weight.grad, ref.weight.grad)  # same kernel: bitwise


def test_no_grad_forward_is_plain_conv():
    conv = nn.Conv3d(2, 3, 3, padding=1)
    use_fast_conv_grad(conv)
    x = torch.randn(1, 2, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(conv(x), F.conv3d(x, conv.weight, conv.bias, 1, 1))


def test_cpu_autocast_keeps_pytorchs_path():
    conv = nn.Conv3d(2, 3, 3, padding=1)
    use_fast_conv_grad(conv)
    x = torch.randn(1, 2, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.grad_fn.name() != "_Conv3dFastGradBackward"
    y.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32
