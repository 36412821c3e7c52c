"""strideconv.report: one row per strided layer and input size, with the count map its
backward has; and its command line."""

import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import strideconv
from reference import count_map_by_autograd


def test_report_rows():
    model = nn.Sequential(
        strideconv.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1), nn.Conv2d(8, 8, 4, 4),
        strideconv.AvgPool2d(2, correction="kernel"), nn.Conv2d(8, 8, 1, 2),
    )
    rows = strideconv.report(model, torch.zeros(1, 3, 32, 32))
    assert [r.name for r in rows] == ["0", "2", "3", "4"]  # the stride-1 conv is left out
    stem, patch, pool, pointwise = rows
    assert stem.input_size == (32, 32) and patch.input_size == (16, 16) and pointwise.input_size == (2, 2)
    assert stem.cell == "[1 2; 2 4]"  # padding 1 shifts [4 2; 2 1] by one position
    assert patch.cell == "uniform: 1"
    for row, (size, k, s, p) in zip((stem, patch, pointwise), (((32, 32), 3, 2, 1), ((16, 16), 4, 4, 0), ((2, 2), 1, 2, 0))):
        f = strideconv.correction_factors(size, k, s, p)
        assert row.deficit == pytest.approx(f.counts.double().mean().item() / k**2)
        assert row.alpha == pytest.approx(f.map)
    assert patch.deficit == pytest.approx(1 / 16)
    assert stem.correction == "position" and patch.correction.startswith("none")
    assert pool.correction == "kernel" and pool.kind == "AvgPool2d"
    table = str(rows)
    assert table.count("\n") == 1 + len(rows) and "| 0 | Conv2d | conv2d | 32x32 | 3x3 | 2x2 | 1x1 | [1 2; 2 4] |" in table


def test_large_cells_are_summarised_by_their_shares():
    """A cell of more than 16 positions is given as each distinct count with the share of positions
    that have it, read here off one stride period in the interior of the reference count map."""
    (row,) = strideconv.report(nn.Sequential(nn.Conv2d(1, 1, 7, 5)), torch.zeros(1, 1, 60, 60))
    period = count_map_by_autograd((60, 60), (7, 7), (5, 5), (0, 0), (1, 1))[20:25, 20:25].flatten().tolist()
    shares = {c: period.count(c) / len(period) for c in sorted(set(period))}
    assert row.cell == ", ".join(f"{int(c)}: {100 * share:.0f}%" for c, share in shares.items())
    assert len(shares) == 3  # counts 1, 2 and 4


def test_report_command_line(tmp_path):
    src = tmp_path / "net.py"
    src.write_text(textwrap.dedent("""
        from torch import nn
        def make():
            return nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 2, 2))
    """))
    out = subprocess.run(
        [sys.executable, "-m", "strideconv.report", f"{src}:make", "--input-size", "1", "3", "16", "16"],
        capture_output=True, text=True, check=True,
    ).stdout
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(lines) == 3  # header and two strided layers
    assert "| 2 | Conv2d | conv2d | 8x8 | 2x2 | 2x2 | 0x0 | uniform: 1 | 0.250 |" in out
    assert "count cell: how many kernel windows reach each position" in out  # the legend


def test_command_line_help_is_plain_text():
    out = run_cli("--help").stdout
    assert "usage: python -m strideconv.report" in out and "--input-size N" in out and "example:" in out
    assert "``" not in out and "**" not in out


def test_padding_modes_use_the_count_map_of_the_padded_input():
    conv = strideconv.Conv2d(1, 1, 3, 2, padding=1, padding_mode="reflect")
    (row,) = strideconv.report(nn.Sequential(conv), torch.zeros(1, 1, 8, 8))
    assert row.input_size == (10, 10) and row.padding == ((0, 0), (0, 0))
    C = count_map_by_autograd((10, 10), (3, 3), (2, 2), (0, 0), (1, 1))
    assert row.deficit == pytest.approx(C.mean().item() / 9)
    alpha = 9**0.5 / (C**1.0).mean().sqrt().item()  # K^g / sqrt(mean C^(2g)), g = 0.5
    assert row.alpha == pytest.approx(alpha)


def test_one_row_per_input_size():
    class TwoScales(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, 2)

        def forward(self, x):
            return self.conv(x).sum() + self.conv(x[..., :9, :9]).sum() + self.conv(x).sum()

    rows = strideconv.report(TwoScales(), torch.zeros(1, 1, 16, 16))
    assert [r.input_size for r in rows] == [(16, 16), (9, 9)]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "strideconv.report", *args], capture_output=True, text=True)


def test_command_line_prints_no_warning(tmp_path):
    src = tmp_path / "net.py"
    src.write_text("from torch import nn\nmodel = nn.Conv2d(3, 4, 3, 2)\n")
    out = run_cli(str(src), "--input-size", "1", "3", "8", "8")
    assert out.returncode == 0 and out.stderr == "", out.stderr


@pytest.mark.parametrize("target, message", [
    ("missing.py:make", "no such file"),
    ("{src}:nothing", "has no name 'nothing'"),
    ("{src}:broken", "calling .* failed: ZeroDivisionError"),
    ("{bad}", "running .* failed: NameError"),
])
def test_command_line_bad_target_is_one_line(tmp_path, target, message):
    src, bad = tmp_path / "net.py", tmp_path / "bad.py"
    src.write_text("def broken():\n    return 1 / 0\n")
    bad.write_text("undefined_name\n")
    out = run_cli(target.format(src=src, bad=bad), "--input-size", "1", "3", "8", "8")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert re.search(message, out.stderr), out.stderr


def test_command_line_measures_gradients_on_request(tmp_path):
    src = tmp_path / "net.py"
    src.write_text(textwrap.dedent("""
        import torch.nn.functional as F
        from torch import nn

        class Blur(nn.Module):  # a functional strided call inside a module's forward
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, 1, 1)

            def forward(self, x):
                return F.conv2d(self.conv(x), self.conv.weight[:, :1].detach().repeat(1, 1, 1, 1)[:4], stride=2,
                                padding=1, groups=4)

        def make():
            return nn.Sequential(nn.Conv2d(3, 3, 3, 2, 1), Blur())
    """))
    out = run_cli(f"{src}:make", "--input-size", "2", "3", "16", "16", "--gradients", "kernel")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert "phase ratio, plain | phase ratio, kernel |" in lines[0]
    assert lines[1].startswith("| 0 | Conv2d | conv2d | 16x16 |") and lines[2].startswith("| 1 | Blur | conv2d | 8x8 |")
    for line in lines[1:]:
        plain, kernel = (float(v) for v in line.strip("| ").split(" | ")[-2:])
        assert plain > 1 and kernel > 0
