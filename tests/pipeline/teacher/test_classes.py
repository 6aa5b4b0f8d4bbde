"""Which teacher label each data class gets: by id2label name (a subset too, comma-separated names
too), through a --class-map file (ImageNet's LOC_synset_mapping.txt layout, or JSON), or by count."""

from __future__ import annotations

import json

import pytest

from clarep_fast.pipeline.teacher.classes import read_class_map, teacher_labels

IMAGENET_LIKE = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark", "disc", "square"]


def test_names_match_a_subset_and_each_comma_separated_name():
    assert teacher_labels(["square", "disc"], IMAGENET_LIKE, 5) == [4, 3]
    assert teacher_labels(["goldfish", "tench, Tinca tinca"], IMAGENET_LIKE, 5) == [1, 0]


def test_names_that_do_not_match_name_both_sides_and_the_way_out():
    with pytest.raises(ValueError) as error:
        teacher_labels(["n01440764", "n01443537"], IMAGENET_LIKE, 5)
    message = str(error.value)
    assert "'n01440764'" in message and "'tench, Tinca tinca'" in message and "--class-map" in message


def test_a_teacher_without_names_is_matched_by_count():
    assert teacher_labels(["a", "b", "c"], None, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="knows 4 classes but the data has 3"):
        teacher_labels(["a", "b", "c"], None, 4)


def test_a_synset_mapping_file_maps_wordnet_ids_to_the_teacher_s_words(tmp_path):
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("n01443537 goldfish, Carassius auratus\n# a comment\n\nn01440764 tench, Tinca tinca\n")
    table = read_class_map(mapping)
    assert table == {"n01443537": "goldfish, Carassius auratus", "n01440764": "tench, Tinca tinca"}
    assert teacher_labels(["n01440764", "n01443537"], IMAGENET_LIKE, 5, table) == [0, 1]
    as_json = tmp_path / "map.json"
    as_json.write_text(json.dumps({"n01440764": 2, "n01443537": "square"}))
    assert teacher_labels(["n01440764", "n01443537"], IMAGENET_LIKE, 5, read_class_map(as_json)) == [2, 4]
    assert teacher_labels(["x"], None, 5, {"x": 3}) == [3]  # by number, for a teacher without names


@pytest.mark.parametrize(
    "table,message",
    [
        ({"n01440764": "tench"}, "no entry for the data's class 'n01443537'"),
        ({"n01440764": "tench", "n01443537": "carp"}, "maps 'n01443537' to 'carp', which is not a class"),
        ({"n01440764": "tench", "n01443537": 9}, "maps 'n01443537' to 9, which is not a class"),
        ({"n01440764": "tench", "n01443537": "Tinca tinca"}, r"would all be the teacher's class 0"),
    ],
)
def test_a_class_map_that_does_not_fit_is_refused_by_name(table, message):
    with pytest.raises(ValueError, match=message):
        teacher_labels(["n01440764", "n01443537"], IMAGENET_LIKE, 5, table)


def test_damaged_class_map_files_are_refused_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--class-map .*nowhere.txt: no such file"):
        read_class_map(tmp_path / "nowhere.txt")
    for text, message in (
        ("n01440764\n", "line 1: expected 'DATA_CLASS TEACHER_CLASS'"),
        ("a x\na y\n", "line 2: 'a' is mapped twice"),
        ("\n# nothing\n", "no mappings in it"),
        ("{not json", "not valid JSON"),
        ('{"a": [1]}', "every value must be a teacher class name or label number"),
    ):
        path = tmp_path / "map.txt"
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_class_map(path)


def test_a_name_two_teacher_classes_share_answers_to_neither():
    names = ["crane, bird", "crane, machine"]
    assert teacher_labels(["crane, bird"], names, 2) == [0]
    with pytest.raises(ValueError, match="have no match"):
        teacher_labels(["crane"], names, 2)
