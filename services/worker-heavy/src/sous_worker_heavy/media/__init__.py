"""The media engine of transcode jobs: probe an input, encode it with ffmpeg, describe the result.

>>> outcome = transcode(Path("in.mov"), TranscodeOptions(preset="hls-720p"), work_dir,
...                     limits=limits, threads=2, on_progress=report, should_stop=cancelled)
>>> sorted(path.name for path in outcome.output.iterdir())
['index.m3u8', 'seg_000.ts', 'seg_001.ts']
"""

from sous_worker_heavy.media.probe import MediaInfo, MediaLimits, probe
from sous_worker_heavy.media.run import ProgressCallback
from sous_worker_heavy.media.transcode import TranscodeOutcome, transcode

__all__ = [
    "MediaInfo",
    "MediaLimits",
    "ProgressCallback",
    "TranscodeOutcome",
    "probe",
    "transcode",
]
