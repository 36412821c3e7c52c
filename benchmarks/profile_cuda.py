"""Which CUDA kernels one strideconv fwd+bwd launches (is the convolution cuDNN's?)."""

import torch
from torch.profiler import ProfilerActivity, profile

import strideconv

torch.backends.cudnn.benchmark = True
for name, layout in [("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)]:
    m = strideconv.Conv2d(128, 128, 3, stride=2, padding=1).cuda().to(memory_format=layout)
    x = torch.randn(32, 128, 56, 56, device="cuda").to(memory_format=layout).requires_grad_()
    for _ in range(3):
        m(x).sum().backward()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        m(x).sum().backward()
        torch.cuda.synchronize()
    print(f"== ResNet-50 3x3/2, batch 32, {name}, correction='position': CUDA kernels")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=90))
