"""Classical baselines, each tuned to its best quality whose encoded bytes fit a byte budget.

Every function takes a 3D (ZYX) or 4D (TZYX) ndarray and a budget in bytes and returns
``(encoded_bytes, reconstruction)`` with the reconstruction in the input's dtype and shape, or
``None`` when even the codec's lowest quality does not fit. The method is the one of
``../shared/BASELINES.md``:

* ``hevc``: ffmpeg libx265, preset veryslow, grayscale ``gray12le``, the data rescaled linearly
  from ``[min, max]`` to 12 bits, CRF bisected (integers 0..51, then a fractional refinement).
* ``h264``: ffmpeg libx264, preset veryslow, ``gray10le``, the data rescaled to 10 bits; the
  decoded luma is read without a range conversion (BASELINES.md's decode had one: see h264()).
* ``jpeg2000``: OpenJPEG via imagecodecs, one JP2 file per Z slice (imagecodecs' default
  container), one quality ``level`` (OpenJPEG's target PSNR in dB, a float) for all slices,
  bisected.
* ``hevc_lean``, ``h264_lean``, ``jpeg2000_j2k``: the same codecs without the bytes that carry
  no image (x265's / x264's informational SEI, the JP2 boxes): stronger baselines.
* ``decimate``: anti-aliased downsampling of Z, Y, X (skimage ``resize``, Gaussian
  pre-filter) to the largest grid (one scale for all axes) whose zstd-19 bytes, in the original
  dtype, fit; cubic (order-3 spline) upsampling back. What anyone can do by hand.
* ``hevc_ds2``: ``hevc`` on the volume downsampled 2x on Z, Y, X, cubic upsampling back.
* ``zstd_lossless``: zstd level 19 of the raw array (for reference, no budget).
* ``sz3``, ``zfp``, ``sperr``, ``tthresh``: the scientific lossy compressors, each tuned by
  its own knob (``benchmarks/scientific.py``, which says how, and how they count bytes).

Bytes counted: the raw elementary stream (``-f hevc`` / ``-f h264``, including the
parameter sets and the encoder's informational SEI, as BASELINES.md counts them), the sum of
the JP2 files, the zstd frame. Side information a real container would need (shape, dtype and
the 2x float ``[min, max]`` of the rescaling: ~24 bytes) is not counted, in the codecs' favour.

4D volumes (T, Z, Y, X): the video codecs and JPEG 2000 see the T*Z slices as consecutive
frames (t-major); decimate and the 2x downsampling of hevc_ds2 act on Z, Y, X only, T is kept.

ffmpeg is taken from the system (Debian packages) for the benchmark only.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import zstandard
from skimage.transform import resize

import scientific  # benchmarks/ is on sys.path wherever this module is loaded from

__all__ = [
    "METHODS",
    "REPRODUCTION",
    "decimate",
    "decimate_grids",
    "ffmpeg_version",
    "h264",
    "h264_gray_decode",
    "h264_lean",
    "hevc",
    "hevc_ds2",
    "hevc_ds2_lean",
    "hevc_lean",
    "jpeg2000",
    "jpeg2000_j2k",
    "zstd_lossless",
]

Result = tuple[int, np.ndarray] | None


# --------------------------------------------------------------------------------------------
# helpers
def _frames(vol: np.ndarray) -> np.ndarray:
    """(frames, H, W): ZYX -> Z frames, TZYX -> T*Z frames (t-major)."""
    return vol.reshape(-1, vol.shape[-2], vol.shape[-1])


def _to_bits(vol: np.ndarray, bits: int) -> tuple[np.ndarray, float, float]:
    vmin, vmax = float(vol.min()), float(vol.max())
    top = 2**bits - 1
    scale = top / (vmax - vmin) if vmax > vmin else 0.0
    q = np.rint((vol.astype(np.float64) - vmin) * scale)
    return np.clip(q, 0, top).astype(np.uint16 if bits > 8 else np.uint8), vmin, vmax


def _cast(values: np.ndarray, dtype: np.dtype, vmin: float, vmax: float) -> np.ndarray:
    """Float values -> ``dtype``, clipped to the original range, rounded for integers."""
    out = np.clip(values, vmin, vmax)
    if np.dtype(dtype).kind in "iu":
        out = np.rint(out)
    return out.astype(dtype)


def _from_bits(q: np.ndarray, bits: int, vmin: float, vmax: float, dtype) -> np.ndarray:
    values = q.astype(np.float64) * ((vmax - vmin) / (2**bits - 1)) + vmin
    return _cast(values, dtype, vmin, vmax)


def _bisect(lo: float, hi: float, fits: Callable[[float], bool], steps: int) -> float | None:
    """Smallest x in [lo, hi] with ``fits(x)``, assuming ``fits`` is monotone (False..True).

    Returns None when ``fits(hi)`` is False. Integer bisection when lo, hi are ints.
    """
    if not fits(hi):
        return None
    if fits(lo):
        return lo
    integer = isinstance(lo, int) and isinstance(hi, int)
    for _ in range(steps):
        if integer and hi - lo <= 1:
            break
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def ffmpeg_version() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        return "ffmpeg not found"
    out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


# --------------------------------------------------------------------------------------------
# video codecs through ffmpeg
_VIDEO = {
    # name: (ffmpeg encoder, elementary stream muxer, pixel format, bits, decoded pixel format)
    # ffmpeg's HEVC decoder returns 4:0:0 streams as gray12le; its H.264 decoder returns them as
    # yuv420p10le (neutral chroma) and the luma plane is taken as is (see h264's docstring).
    "hevc": ("libx265", "hevc", "gray12le", 12, "gray12le"),
    "h264": ("libx264", "h264", "gray10le", 10, "yuv420p10le"),
}


#: Encoded streams by (codec, preset, digest of the frames, CRF): the bisections of several
#: ratios (and the lean variants, which strip the same streams) share their encodes.
_STREAMS: dict[tuple, bytes] = {}
#: SEI NAL unit types: H.264 6; HEVC 39 (prefix) and 40 (suffix).
_SEI_TYPES = {"libx264": "6", "libx265": "39-40"}


class _Video:
    """Encodes one frame stack at several CRFs, caching the streams."""

    def __init__(
        self,
        codec: str,
        vol: np.ndarray,
        tmp: Path,
        preset: str = "veryslow",
        lean: bool = False,
        decode_as_gray: bool = False,
    ):
        self.encoder, self.muxer, self.pix_fmt, self.bits, self.decoded = _VIDEO[codec]
        if decode_as_gray:
            self.decoded = self.pix_fmt
        self.lean = lean
        self.shape, self.dtype = vol.shape, vol.dtype
        frames = _frames(vol)
        q, self.vmin, self.vmax = _to_bits(frames, self.bits)
        self.n, self.h, self.w = q.shape
        self.tmp = tmp
        self.raw = tmp / f"in_{codec}.raw"
        data = q.astype("<u2").tobytes()
        self.raw.write_bytes(data)
        self.key = (codec, preset, q.shape, hashlib.sha1(data).hexdigest())
        self.preset = preset

    def _ffmpeg(self, *args: str) -> None:
        cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
        subprocess.run(cmd, check=True, capture_output=True)

    def encode(self, crf: float) -> bytes:
        """The elementary stream at ``crf`` (its SEI NAL units stripped when ``lean``)."""
        key = (*self.key, float(crf))
        if key not in _STREAMS:
            out = self.tmp / f"out.{self.muxer}"
            self._ffmpeg(
                "-f", "rawvideo", "-pix_fmt", self.pix_fmt, "-s", f"{self.w}x{self.h}",
                "-r", "25", "-i", str(self.raw),
                "-c:v", self.encoder, "-preset", self.preset, "-crf", f"{crf:g}",
                "-pix_fmt", self.pix_fmt, *self._params(), "-f", self.muxer, str(out),
            )  # fmt: skip
            _STREAMS[key] = out.read_bytes()
        if not self.lean:
            return _STREAMS[key]
        lean_key = (*key, "lean")
        if lean_key not in _STREAMS:
            src, dst = self.tmp / f"full.{self.muxer}", self.tmp / f"lean.{self.muxer}"
            src.write_bytes(_STREAMS[key])
            self._ffmpeg(
                "-f", self.muxer, "-i", str(src), "-c:v", "copy",
                "-bsf:v", f"filter_units=remove_types={_SEI_TYPES[self.encoder]}",
                "-f", self.muxer, str(dst),
            )  # fmt: skip
            _STREAMS[lean_key] = dst.read_bytes()
        return _STREAMS[lean_key]

    def _params(self) -> list[str]:
        if self.encoder == "libx265":
            return ["-x265-params", "log-level=error"]
        return []

    def decode(self, stream: bytes) -> np.ndarray:
        src, dst = self.tmp / f"dec.{self.muxer}", self.tmp / "dec.raw"
        src.write_bytes(stream)
        cmd = [
            "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-f", self.muxer, "-i", str(src), "-f", "rawvideo", "-pix_fmt", self.decoded,
            str(dst),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        q = np.fromfile(dst, dtype="<u2")
        luma = self.h * self.w
        per_frame = luma
        if self.decoded.startswith("yuv420p"):
            per_frame += 2 * ((self.h + 1) // 2) * ((self.w + 1) // 2)
        if q.size != self.n * per_frame:
            raise RuntimeError(f"decoded {q.size} samples, expected {self.n * per_frame}")
        q = q.reshape(self.n, per_frame)[:, :luma]
        return _from_bits(q.reshape(self.shape), self.bits, self.vmin, self.vmax, self.dtype)


def _video(codec: str, vol: np.ndarray, budget_bytes: int, refine: int = 4, **options) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"moec-{codec}-") as tmp:
        video = _Video(codec, vol, Path(tmp), **options)

        def fits(crf: float) -> bool:
            return len(video.encode(crf)) <= budget_bytes

        crf = _bisect(0, 51, fits, steps=8)
        if crf is None:
            return None
        if crf > 0 and refine:  # fractional CRF between the last failing and the fitting one
            crf = _bisect(float(crf - 1), float(crf), fits, steps=refine)
        stream = video.encode(crf)
        return len(stream), video.decode(stream)


def hevc(vol: np.ndarray, budget_bytes: int, *, lean: bool = False, refine: int = 4) -> Result:
    """HEVC (libx265 veryslow, 12-bit gray) at the lowest CRF that fits.

    ``lean=True`` strips the SEI NAL units (``filter_units`` bitstream filter): x265's
    informational SEI, a ~2.3 kB text of the encoder's version and options in every stream,
    which BASELINES.md counts (stripping it gives the same stream as x265's ``info=0``). ``refine``:
    bisection steps of a fractional CRF after the integer one (0: integer CRF only).
    """
    return _video("hevc", vol, budget_bytes, refine, lean=lean)


def hevc_lean(vol: np.ndarray, budget_bytes: int) -> Result:
    """:func:`hevc` without x265's informational SEI."""
    return hevc(vol, budget_bytes, lean=True)


def h264(
    vol: np.ndarray,
    budget_bytes: int,
    *,
    lean: bool = False,
    decode_as_gray: bool = False,
    refine: int = 4,
) -> Result:
    """H.264 (libx264 veryslow, 10-bit gray) at the lowest CRF that fits.

    ffmpeg's H.264 decoder returns monochrome streams as ``yuv420p10le``; asking it for
    ``gray10le`` instead makes swscale treat the luma as limited (TV) range and stretch it by
    1023/876 with an offset of -64, clipped: a reconstruction error that caps H.264 near 29 dB
    on hipct whatever the bitrate. ``decode_as_gray=True`` reproduces that (BASELINES.md's
    H.264 numbers); the default takes the decoded luma plane as is. ``lean=True`` strips the
    SEI NAL units (x264's ~0.6 kB options text) with the ``filter_units`` bitstream filter.
    """
    return _video("h264", vol, budget_bytes, refine, lean=lean, decode_as_gray=decode_as_gray)


def h264_lean(vol: np.ndarray, budget_bytes: int) -> Result:
    """:func:`h264` with the SEI NAL units stripped."""
    return h264(vol, budget_bytes, lean=True)


def h264_gray_decode(vol: np.ndarray, budget_bytes: int) -> Result:
    """:func:`h264` decoded through ``gray10le`` as BASELINES.md did (reproduction only)."""
    return h264(vol, budget_bytes, decode_as_gray=True)


# --------------------------------------------------------------------------------------------
# JPEG 2000
def jpeg2000(vol: np.ndarray, budget_bytes: int, *, container: str = "jp2") -> Result:
    """OpenJPEG per Z slice; one target-PSNR ``level`` (dB, float) for all slices, bisected.

    ``container="jp2"`` (imagecodecs' default, BASELINES.md) wraps every slice in a JP2 file
    (~85 bytes of boxes each); ``"j2k"`` writes the bare codestreams.
    """
    frames = _frames(vol)
    if vol.dtype == np.float32:  # JPEG 2000 has no float: code 16-bit rescaled integers
        q, vmin, vmax = _to_bits(frames, 16)
    else:
        q, vmin, vmax = frames, float(vol.min()), float(vol.max())
    cache: dict[float, list[bytes]] = {}

    def encode(level: float) -> list[bytes]:
        if level not in cache:
            cache[level] = [imagecodecs.jpeg2k_encode(s, level, codecformat=container) for s in q]
        return cache[level]

    def fits(inverted: float) -> bool:  # higher level = higher quality: fits is True..False
        return sum(map(len, encode(101.0 - inverted))) <= budget_bytes

    inverted = _bisect(1.0, 100.0, fits, steps=14)
    if inverted is None:
        return None
    codes = encode(101.0 - inverted)
    dec = np.stack([imagecodecs.jpeg2k_decode(c) for c in codes])
    if vol.dtype == np.float32:
        dec = _from_bits(dec, 16, vmin, vmax, vol.dtype)
    return sum(map(len, codes)), dec.reshape(vol.shape).astype(vol.dtype)


# --------------------------------------------------------------------------------------------
# decimation
def _spatial_resize(vol: np.ndarray, spatial: tuple[int, ...], order: int, aa: bool):
    """Resize the last three axes (each T frame separately for 4D), float64 out."""
    if vol.ndim == 4:
        return np.stack([_spatial_resize(v, spatial, order, aa) for v in vol])
    return resize(
        vol.astype(np.float64),
        spatial,
        order=order,
        mode="reflect",
        anti_aliasing=aa,
        preserve_range=True,
    )


def downsample(vol: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    """Anti-aliased (Gaussian pre-filter + linear) resize of Z, Y, X, in ``vol``'s dtype."""
    small = _spatial_resize(vol, spatial, order=1, aa=True)
    return _cast(small, vol.dtype, float(vol.min()), float(vol.max()))


def upsample(small: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Cubic-spline resize of Z, Y, X back to ``like``'s grid, in its dtype and range."""
    big = _spatial_resize(small, like.shape[-3:], order=3, aa=False)
    return _cast(big, like.dtype, float(like.min()), float(like.max()))


def _zstd(array: np.ndarray) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(np.ascontiguousarray(array).tobytes())


def decimate_grids(spatial: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every distinct grid ``round(n * s)`` (at least 1) of one scale ``s`` in (0, 1], for the
    Z, Y, X sizes ``spatial``, smallest first: the candidates of :func:`decimate`."""
    scales = {1.0}
    for n in spatial:
        scales.update((m - 0.5) / n for m in range(2, n + 1))  # where round(n * s) steps up
    grids = {tuple(max(1, min(n, math.floor(n * s + 0.5))) for n in spatial) for s in scales}
    return sorted(grids, key=lambda g: (math.prod(g), g))


def decimate(vol: np.ndarray, budget_bytes: int) -> Result:
    """Largest uniformly scaled Z, Y, X grid whose zstd-19 bytes fit; cubic upsampling."""
    spatial = tuple(vol.shape[-3:])
    grids = decimate_grids(spatial)
    cache: dict[int, tuple[int, np.ndarray]] = {}

    def encode(i: int) -> tuple[int, np.ndarray]:
        if i not in cache:
            small = vol if grids[i] == spatial else downsample(vol, grids[i])
            cache[i] = (len(_zstd(small)), small)
        return cache[i]

    def fits(inverted: int) -> bool:  # a larger grid = more bytes
        return encode(len(grids) - inverted)[0] <= budget_bytes

    inverted = _bisect(1, len(grids), fits, steps=32)
    if inverted is None:
        return None
    i = len(grids) - inverted
    # zstd bytes are not strictly monotone in the grid: try a few larger grids as well
    for bigger in range(i + 1, min(len(grids), i + 4)):
        if encode(bigger)[0] <= budget_bytes:
            i = bigger
    nbytes, small = encode(i)
    return nbytes, (vol.copy() if grids[i] == spatial else upsample(small, vol))


def hevc_ds2(vol: np.ndarray, budget_bytes: int, *, lean: bool = False, refine: int = 4) -> Result:
    """HEVC of the volume downsampled 2x on Z, Y, X, cubic upsampling back."""
    spatial = tuple(max(1, math.ceil(n / 2)) for n in vol.shape[-3:])
    small = downsample(vol, spatial)
    coded = hevc(small, budget_bytes, lean=lean, refine=refine)
    if coded is None:
        return None
    nbytes, dec = coded
    return nbytes, upsample(dec, vol)


def hevc_ds2_lean(vol: np.ndarray, budget_bytes: int) -> Result:
    """:func:`hevc_ds2` without x265's informational SEI."""
    return hevc_ds2(vol, budget_bytes, lean=True)


def zstd_lossless(vol: np.ndarray) -> tuple[int, np.ndarray]:
    """zstd level 19 of the raw array: the lossless reference."""
    data = _zstd(vol)
    back = np.frombuffer(zstandard.ZstdDecompressor().decompress(data), dtype=vol.dtype)
    return len(data), back.reshape(vol.shape).copy()


def jpeg2000_j2k(vol: np.ndarray, budget_bytes: int) -> Result:
    """:func:`jpeg2000` with bare J2K codestreams (no JP2 boxes)."""
    return jpeg2000(vol, budget_bytes, container="j2k")


#: The methods of the rate-distortion tables; the ``*_lean`` / ``j2k`` variants are the
#: stronger settings of the same codecs (header bytes not wasted), not in BASELINES.md.
METHODS: dict[str, Callable[[np.ndarray, int], Result]] = {
    "hevc": hevc,
    "hevc_lean": hevc_lean,
    "h264": h264,
    "h264_lean": h264_lean,
    "jpeg2000": jpeg2000,
    "jpeg2000_j2k": jpeg2000_j2k,
    "decimate": decimate,
    "hevc_ds2": hevc_ds2,
    "hevc_ds2_lean": hevc_ds2_lean,
    **scientific.METHODS,
}

#: Only to reproduce BASELINES.md (see :func:`h264`).
REPRODUCTION: dict[str, Callable[[np.ndarray, int], Result]] = {
    "h264_gray_decode": h264_gray_decode,
}
