"""Video: streaming multi-object tracking, the official offline VIS mode, VOS, interactive and referring
video segmentation, with MOTChallenge / YouTube-VIS / MP4 output.

* :class:`VideoTracker` -- online MOT / VIS from a category list (MinVIS association, flat memory);
* :func:`track_offline` -- the official whole-video protocol (``GLEE.MinVIS_inference``), YouTube-VIS output;
* :class:`ObjectTracker`, :func:`segment_objects`, :func:`track_click` -- VOS from first-frame masks, boxes,
  clicks;
* :class:`ReferringTracker`, :func:`segment_expression` -- referring video object segmentation;
* :func:`open_video` -- frames from a video file, a folder, or any iterable, one at a time;
* :class:`MOTWriter`, :class:`YTVISWriter`, :class:`VideoWriter`, :func:`write_tracks_video` -- output.
"""

from glee.video.association import MinVISAssociator, match_embeddings
from glee.video.cli import cli_predict_video
from glee.video.export import MOTWriter, YTVISWriter, read_mot
from glee.video.offline import OfflineVideoResult, VideoInstance, track_offline
from glee.video.reader import FrameSource, VideoInfo, VideoReadError, open_video
from glee.video.tracker import VideoTracker
from glee.video.tracks import TrackedFrame
from glee.video.vos import ObjectTracker, ReferringTracker, segment_expression, segment_objects, track_click
from glee.video.writer import VideoWriter, draw_frame, write_tracks_video

__all__ = [
    "FrameSource",
    "MOTWriter",
    "MinVISAssociator",
    "ObjectTracker",
    "OfflineVideoResult",
    "ReferringTracker",
    "TrackedFrame",
    "VideoInfo",
    "VideoInstance",
    "VideoReadError",
    "VideoTracker",
    "VideoWriter",
    "YTVISWriter",
    "cli_predict_video",
    "draw_frame",
    "match_embeddings",
    "open_video",
    "read_mot",
    "segment_expression",
    "segment_objects",
    "track_click",
    "track_offline",
    "write_tracks_video",
]
