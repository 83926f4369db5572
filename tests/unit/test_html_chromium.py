"""The HTML report renders in headless Chromium: a screenshot, and the
three charts' line colours are really on it."""

import struct
import zlib

import pytest

from tests.chromium import CHROMIUM, artifacts, screenshot
from tests.unit.test_capture_report import make_capture
from tracer.formats.capture import read_capture
from tracer.core.report import analyse
from tracer.views.report import to_html



def png_pixels(data: bytes):
    """(width, height, rows of RGB(A) tuples) of an 8-bit, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and ctype in (2, 6)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return w, h, bpp, rows


@pytest.mark.skipif(not CHROMIUM, reason="needs Chromium (apt-get install chromium)")
def test_html_report_draws_its_charts(tmp_path):
    rep = analyse(read_capture(str(make_capture(tmp_path / "c", seconds=20))))
    page = tmp_path / "r.html"
    page.write_text(to_html(rep))
    shot = screenshot(page, artifacts() / "report-unit.png", tmp_path / "profile")
    w, h, bpp, rows = png_pixels(shot.read_bytes())
    colours = {"fill": (0x1f, 0x77, 0xb4), "drops": (0xd6, 0x27, 0x28), "inserts": (0x2c, 0xa0, 0x2c)}
    seen = {k: 0 for k in colours}
    for line in rows:
        for x in range(0, w * bpp, bpp):
            px = tuple(line[x:x + 3])
            for k, c in colours.items():
                if all(abs(px[i] - c[i]) < 40 for i in range(3)):
                    seen[k] += 1
    assert all(n > 50 for n in seen.values()), seen       # each chart's line is drawn
