"""TensorRT optimization profiles from what a run needs (pure Python: no TensorRT, no GPU)."""

from __future__ import annotations

import json

from mlvos.runtime.backends.trt import ENGINE_FORMAT, Profile, engine_paths, profile_for
from mlvos.runtime.manifest import Manifest
from mlvos.runtime.spec import Graph, internal_size


def _manifest(tmp_path, static_size=None) -> Manifest:
    return Manifest.new(tmp_path, {"graphs": {}, "stride": 32, "capacity": 4,
                                   "static_size": static_size})


def test_default_profile_takes_1080p(tmp_path):
    m = _manifest(tmp_path)
    fitted = Profile().fitted(m)
    assert (fitted.max_height, fitted.max_width) == (1088, 1920)
    assert Profile().covers(m, 1080, 1920) and not Profile().covers(m, 1920, 1080)
    assert not Profile().covers(m, 2160, 3840)


def test_covering_keeps_the_base_range_and_tunes_for_the_video(tmp_path):
    m = _manifest(tmp_path)
    p = Profile.covering([(2160, 3840), (1080, 1920)])
    assert p.covers(m, 2160, 3840) and p.covers(m, 1080, 1920)
    assert (p.opt_height, p.opt_width) == (2160, 3840)
    portrait = Profile.covering([(1920, 1080)])
    assert portrait.covers(m, 1920, 1080) and portrait.covers(m, 1080, 1920)
    assert Profile.covering([]) == Profile()


def test_profile_for_reuses_cached_engines_that_cover(tmp_path):
    m = _manifest(tmp_path)
    engines = tmp_path / "engines"
    assert profile_for(m, "fp16", [(1080, 1920)]) == Profile()  # nothing cached: the default
    small = Profile(max_height=480, max_width=864, opt_height=480, opt_width=864)
    for g in Graph.ALL:
        meta = engine_paths(engines, g, "fp16")[1]
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"format": ENGINE_FORMAT, "key": {"profile": small.__dict__}}))
    assert profile_for(m, "fp16", [(480, 854)]) == small  # covered: no rebuild
    grown = profile_for(m, "fp16", [(1080, 1920)])
    assert grown.covers(m, 1080, 1920) and (grown.opt_height, grown.opt_width) == (1080, 1920)
    # mlvos run --max-side 1080 on a 4K video: the network sees 1080 on the long side
    assert profile_for(m, "fp16", [internal_size(2160, 3840, 1080)]).covers(m, 608, 1080)
    assert profile_for(m, "fp32", [(480, 854)]) == Profile()  # other precision: its own cache
