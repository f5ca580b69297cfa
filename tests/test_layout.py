"""Layout v1 parsing and validation (DESIGN §1)."""
import json
import math

import pytest

from refcomp_core import LayoutError, parse_layout


def doc(*instances, **top):
    return {"version": 1, "width": 256, "height": 128, "instances": list(instances), **top}


def inst(**kw):
    return {"box": [0.1, 0.1, 0.5, 0.6], "ref": 0, "caption": "a cat", "depth": "fg", "alpha": None, **kw}


def test_valid_layout_round_trips_and_keeps_unknown_keys():
    layout = parse_layout(doc(inst(my_key=3), inst(ref=None, caption=None, depth=None), note="hi"), num_refs=1)
    assert len(layout) == 2
    assert layout.instances[0].extra == {"my_key": 3}
    assert layout.extra == {"note": "hi"}
    again = parse_layout(layout.to_json(), num_refs=1)
    assert again == layout
    assert json.loads(layout.to_json())["instances"][0]["my_key"] == 3


def test_json_text_and_empty_caption():
    layout = parse_layout(json.dumps(doc(inst(caption="  "))))
    assert layout.instances[0].caption is None


@pytest.mark.parametrize("bad, index, field", [
    (inst(box=[0.1, math.nan, 0.5, 0.6]), 0, "box"),
    (inst(box=[-0.1, 0.1, 0.5, 0.6]), 0, "box"),
    (inst(box=[0.1, 0.1, 1.5, 0.6]), 0, "box"),
    (inst(box=[0.5, 0.1, 0.5, 0.6]), 0, "box"),          # empty
    (inst(box=[0.6, 0.1, 0.5, 0.6]), 0, "box"),          # inverted
    (inst(box=[0.1, 0.1, 0.5]), 0, "box"),
    (inst(box=[0.1, 0.1, 0.15, 0.6]), 0, "box"),         # 12.8 px wide: under one token
    (inst(ref=5), 0, "ref"),
    (inst(ref=-1), 0, "ref"),
    (inst(ref="a.png"), 0, "ref"),
    (inst(depth="middle"), 0, "depth"),
    (inst(alpha=1.5), 0, "alpha"),
    (inst(alpha=math.inf), 0, "alpha"),
    (inst(caption=3), 0, "caption"),
])
def test_bad_instance_names_index_and_field(bad, index, field):
    with pytest.raises(LayoutError) as err:
        parse_layout(doc(inst(), bad) if index else doc(bad), num_refs=2)
    assert f"instances[{index}].{field}" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_error_points_at_the_right_instance():
    with pytest.raises(LayoutError, match=r"instances\[2\]\.depth"):
        parse_layout(doc(inst(), inst(), inst(depth="far")), num_refs=1)


def test_too_many_instances():
    with pytest.raises(LayoutError, match="max_instances=50"):
        parse_layout(doc(*[inst() for _ in range(51)]), num_refs=1)
    assert len(parse_layout(doc(*[inst() for _ in range(51)]), num_refs=1, max_instances=60)) == 51


@pytest.mark.parametrize("version", [2, 0, None, "1", True])
def test_unknown_version_is_refused(version):
    with pytest.raises(LayoutError, match="version"):
        parse_layout(doc(version=version))


@pytest.mark.parametrize("key, value", [("width", 0), ("height", -5), ("width", 10.5), ("height", "big")])
def test_bad_dimensions(key, value):
    with pytest.raises(LayoutError, match=f"layout.{key}"):
        parse_layout(doc(**{key: value}))


def test_not_json_and_not_object():
    with pytest.raises(LayoutError, match="not valid JSON"):
        parse_layout("{oops")
    with pytest.raises(LayoutError, match="JSON object"):
        parse_layout("[1, 2]")


def test_ref_count_mismatch_names_valid_range():
    with pytest.raises(LayoutError, match=r"valid indices: 0\.\.1"):
        parse_layout(doc(inst(ref=2)), num_refs=2)
    with pytest.raises(LayoutError, match="reference set is empty"):
        parse_layout(doc(inst(ref=0)), num_refs=0)


def test_manifest_refs_are_paths():
    layout = parse_layout(doc(inst(ref="crops/a.png")), ref_kind="path")
    assert layout.instances[0].ref == "crops/a.png"


def test_exactly_one_token_box_is_accepted():
    parse_layout(doc(inst(box=[0.0, 0.0, 16 / 256, 16 / 128])))
