"""`ae-bench`: what ONNX Runtime buys over PyTorch, how close it runs to the hardware, how the serving paths
and training loop perform, and how good the denoising is against classical filters; every ratio is
against a baseline measured in the same run, on the user's machine.

The package sits on top of `runtimes`, `train` and `ae_export` and nothing imports it. Each section is
one module with `NEEDS_DATA`, `heading(result)`, `TABLES` (columns declared with `bench.tables`) and
`run(ctx: BenchContext) -> dict`; adding a section means writing that module and adding one line to
`bench.report.SECTIONS`, which also makes it a valid `--sections` name.

    timing.py       Budget per mode, per-call timing, the one latency summary
    machine.py      CPU model and SIMD flags, library versions, float32 matmul peak
    tables.py       Column / Table declarations and the one Markdown renderer
    section.py      BenchContext, ModelUnderTest, the Section interface
    inference.py    PyTorch eager vs ONNX Runtime per batch size (+ flops.py, ort_variants.py)
    concurrency.py  the micro-batcher with 1/8/32 callers vs one ORT call per request
    cli_io.py       the `ae-denoise` pipeline vs bare Pillow decode+encode of the same PNGs
    training.py     our in-memory loop vs the lecture's torchvision + ToTensor + DataLoader loop
    quality.py      PSNR/SSIM/ms of classical denoisers (tuned on a separate slice) and our models
    edge_variants.py  fp16/int8/.ort files: size, PSNR, loss and speed vs fp32, int8 dot-product flags
    report.py       the section registry, orchestration, header and JSON
    cli.py          argument parsing only
"""
