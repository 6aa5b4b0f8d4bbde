"""The field's evaluation sets on tiny replicas of their published layouts, built here: metrics checked
by hand (BG-Gap, mCE with a known reference, restriction to a class subset by name, ReaL with empty
and multi-label sets, AutoAttack's worst case against its parts), and one clear line per bad layout.

The student is a "color model": an image of uniform gray (k + 0.5) / K is predicted as class k, so
each replica image is written to be predicted as the class the test wants.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from clarep_fast.pipeline.data import DataConfig, FolderImages
from clarep_fast.pipeline.data.listing import list_image_folder
from clarep_fast.pipeline.evaluate import autoattack
from clarep_fast.pipeline.evaluate.corruption_error import mean_corruption_error, read_reference
from clarep_fast.pipeline.evaluate.robustness import EvaluateConfig, evaluate_student
from clarep_fast.pipeline.evaluate.sets import EVALUATION_SETS, imagenet9, imagenet_c, parse_set, real
from clarep_fast.pipeline.evaluate.sets.class_subset import IMAGENET_A
from clarep_fast.pipeline.evaluate.sets.scoring import Scoring, predictions

IN9 = ["00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore", "05_insect", "06_musical instrument",
       "07_primate", "08_fish"]  # fmt: skip
WNIDS = [f"n{index:08d}" for index in (1440764, 1443537, 1484850, 1491361, 1494475, 1496331, 1498041, 1514668,
                                       1514859, 1518878, 1530575, 1531178)]  # fmt: skip  # 12 real wnids, sorted


class ColorModel(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.centers = nn.Parameter((torch.arange(num_classes) + 0.5) / num_classes, requires_grad=False)

    def forward(self, images):  # (b, 3, R, R) -> (b, K): the nearer the mean gray to class k's, the larger
        return -100 * (images.mean((1, 2, 3))[:, None] - self.centers).abs()


def _write(folder, predicted: list[int], num_classes: int, side: int = 12, first: int = 0):
    """One uniform image per entry, gray (k + 0.5) / K for the class k it is to be predicted as."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, k in enumerate(predicted, start=first):
        level = round((k + 0.5) / num_classes * 255)
        Image.fromarray(np.full((side, side, 3), level, dtype=np.uint8)).save(folder / f"image_{number:04d}.png")


def _scoring(classes, **options):
    return Scoring(
        ColorModel(len(classes)).eval(), classes, 12, 4, 0, options.pop("clean", None), EvaluateConfig(**options)
    )


def test_imagenet9_nine_class_student_and_bg_gap(tmp_path):
    """Per variant, 9 images (one per class): mixed_same all right, mixed_rand 6 of 9: BG-Gap 3/9."""
    truth = list(range(9))
    rand = [0, 1, 2, 3, 4, 5, 0, 0, 0]  # the last three predicted as class 0
    student = list(reversed(IN9))  # the student lists its classes in another order: matched by name
    for variant, predicted in (
        ("original", truth),
        ("mixed_same", truth),
        ("mixed_rand", rand),
        ("only_bg_t", [0] * 9),
    ):
        for label, k in enumerate(predicted):
            _write(tmp_path / variant / "val" / IN9[label], [student.index(IN9[k])], 9)
    results = imagenet9.score(_scoring(student), tmp_path)
    assert results["in9/original"] == 1 and results["in9/mixed_same"] == 1
    assert results["in9/mixed_rand"] == pytest.approx(6 / 9) and results["in9/only_bg_t"] == pytest.approx(1 / 9)
    assert results["in9_bg_gap"] == pytest.approx(3 / 9)


def test_imagenet9_through_the_mapping_file(tmp_path):
    """A 12-class "ImageNet" student: classes 0..8 map to IN-9 class i, 9..11 to -1 (outside the nine)."""
    for label in range(9):
        _write(tmp_path / "original" / "val" / IN9[label], [label, 10 if label < 3 else label], 12)
    mapping = tmp_path / "in_to_in9.json"
    mapping.write_text(json.dumps({str(i): (i if i < 9 else -1) for i in range(12)}))
    results = imagenet9.score(_scoring(WNIDS, in9_map=str(mapping)), tmp_path)
    assert results == {"in9/original": pytest.approx(15 / 18)}  # 3 images predicted as class 10 -> -1: wrong
    mapping.write_text(json.dumps({str(i): -1 for i in range(12)}))
    with pytest.raises(ValueError, match="maps nothing"):
        imagenet9.score(_scoring(WNIDS, in9_map=str(mapping)), tmp_path)
    with pytest.raises(ValueError, match="give the challenge's mapping file with --in9-map"):
        imagenet9.score(_scoring(WNIDS), tmp_path)
    mapping.write_text(json.dumps({"12": 0}))
    with pytest.raises(ValueError, match="key '12' is not a class index"):
        imagenet9.score(_scoring(WNIDS, in9_map=str(mapping)), tmp_path)


def test_imagenet9_bad_layouts(tmp_path):
    with pytest.raises(ValueError, match="no variant folder found"):
        imagenet9.score(_scoring(IN9), tmp_path)
    (tmp_path / "mixed_rand").mkdir()
    with pytest.raises(ValueError, match="has no val/ folder"):
        imagenet9.score(_scoring(IN9), tmp_path)


def _imagenet_c(root, table: dict[str, list[list[int]]], wnids=WNIDS[:2]):
    """table[corruption][s - 1]: the predicted class of each image; images of class wnids[i % 2]."""
    for name, severities in table.items():
        for severity, predicted in enumerate(severities, start=1):
            for i, k in enumerate(predicted):
                _write(root / name / str(severity) / wnids[i % 2], [k], 12, first=i)


def test_imagenet_c_accuracy_and_mce_against_a_known_reference(tmp_path):
    right, half, wrong = [0, 1], [0, 5], [5, 5]  # two images per folder, of classes 0 and 1
    _imagenet_c(tmp_path / "c", {"gaussian_noise": [right, right, half, half, wrong], "contrast": [half] * 5})
    reference = tmp_path / "alexnet.json"
    reference.write_text(json.dumps({"clean": 0.2, "errors": {"gaussian_noise": [0.8] * 5, "contrast": [1.0] * 5}}))
    results = imagenet_c.score(_scoring(WNIDS, clean=0.75, mce_reference=str(reference)), tmp_path / "c")
    assert results["imagenet_c/gaussian_noise/3"] == 0.5 and results["imagenet_c/gaussian_noise/5"] == 0
    assert results["imagenet_c/gaussian_noise"] == pytest.approx(0.6) and results["imagenet_c/contrast"] == 0.5
    assert results["imagenet_c_accuracy"] == pytest.approx(0.55)
    # CE: gaussian 2 / 4, contrast 2.5 / 5 -> mCE 0.5; relative (E_clean 0.25, reference 0.2):
    # gaussian (2 - 1.25) / (4 - 1) = 0.25, contrast (2.5 - 1.25) / (5 - 1) = 0.3125
    assert results["imagenet_c_mce"] == pytest.approx(0.5)
    assert results["imagenet_c_relative_mce"] == pytest.approx((0.25 + 0.3125) / 2)
    # an evaluation.json of the same student as the reference: mCE 1, relative mCE 1
    own = tmp_path / "evaluation.json"
    own.write_text(json.dumps({"clean": 0.75, **results}))
    assert read_reference(own, "imagenet_c")[1] == pytest.approx(0.25)
    again = imagenet_c.score(_scoring(WNIDS, clean=0.75, mce_reference=str(own)), tmp_path / "c")
    assert again["imagenet_c_mce"] == pytest.approx(1) and again["imagenet_c_relative_mce"] == pytest.approx(1)


def test_mce_leaves_out_extra_corruptions_and_undefined_relative_errors():
    errors = {"speckle_noise": [0.5] * 5, "snow": [0.4] * 5, "fog": [0.6] * 5}
    reference = {"speckle_noise": [0.25] * 5, "snow": [0.8] * 5, "fog": [0.1] * 5}
    results = mean_corruption_error(errors, reference, clean=0.3, reference_clean=0.2)
    assert results["imagenet_c_mce"] == pytest.approx((0.5 + 6.0) / 2)  # speckle_noise is an extra corruption
    assert results["imagenet_c_relative_mce"] == pytest.approx(0.5 / 3)  # fog's reference lost nothing: left out
    assert mean_corruption_error({"speckle_noise": [0.5] * 5}, reference) == {}


def test_imagenet_c_bad_layouts(tmp_path):
    _imagenet_c(tmp_path / "c", {"snow": [[0, 1]] * 4})
    with pytest.raises(ValueError, match=r"severity folder .*snow/5 is missing"):
        imagenet_c.score(_scoring(WNIDS), tmp_path / "c")
    _imagenet_c(tmp_path / "d", {"rain": [[0, 1]] * 5})
    with pytest.raises(ValueError, match="unknown corruption folder.*rain"):
        imagenet_c.score(_scoring(WNIDS), tmp_path / "d")
    _imagenet_c(tmp_path / "e", {"snow": [[0, 1]] * 5}, wnids=["n09999999", WNIDS[1]])
    with pytest.raises(ValueError, match="classes the student does not know.*n09999999"):
        imagenet_c.score(_scoring(WNIDS), tmp_path / "e")
    reference = tmp_path / "bad.json"
    reference.write_text(json.dumps({"errors": {"snow": [0.5] * 4}}))
    _imagenet_c(tmp_path / "f", {"snow": [[0, 1]] * 5})
    with pytest.raises(ValueError, match="snow must list 5 errors"):
        imagenet_c.score(_scoring(WNIDS, mce_reference=str(reference)), tmp_path / "f")


def test_imagenet_a_restricts_the_logits_to_its_classes_by_name(tmp_path):
    """The student knows 6 classes, listed unsorted; the folder holds 3 of them (wnids 0, 2, 5 = the
    student's classes 2, 4, 3), two images each, all of the gray of the student's class 0 (wnid 3,
    not in the folder). Unrestricted, every prediction is class 0: all wrong. Restricted to the
    folder's classes, the nearest gray is class 2 (wnid 0): the two images of folder wnid 0 are right."""
    student = [WNIDS[i] for i in (3, 1, 0, 5, 2, 4)]
    for position in (0, 2, 5):
        _write(tmp_path / "a" / WNIDS[position], [0, 0], 6)
    scoring = _scoring(student)
    assert IMAGENET_A.score(scoring, tmp_path / "a") == {"imagenet_a": pytest.approx(2 / 6)}
    files, _, _ = list_image_folder(tmp_path / "a")
    assert (predictions(scoring, FolderImages(files, torch.zeros(6, dtype=torch.long), student, 12)) == 0).all()
    _write(tmp_path / "a" / "n09999999", [0], 6)
    with pytest.raises(ValueError, match=r"--sets imagenet-a:.*n09999999"):
        IMAGENET_A.score(scoring, tmp_path / "a")


def test_real_with_empty_and_multi_label_sets(tmp_path):
    """Five validation images (flat, written out of order): predictions 0, 2, 3, 1, 4 against
    [[0], [1, 2], [], [3], [0, 4]]: the empty set is left out, 3 of the other 4 are right."""
    folder = tmp_path / "val"
    folder.mkdir()
    for number, k in ((5, 4), (2, 2), (1, 0), (4, 1), (3, 3)):
        level = round((k + 0.5) / 12 * 255)
        Image.fromarray(np.full((12, 12, 3), level, dtype=np.uint8)).save(folder / f"ILSVRC2012_val_{number:08d}.png")
    (folder / "real.json").write_text(json.dumps([[0], [1, 2], [], [3], [0, 4]]))
    assert real.score(_scoring(WNIDS), folder) == {"real_accuracy": 0.75}
    (folder / "real.json").write_text(json.dumps([[0], [1, 2], [], [3]]))
    with pytest.raises(ValueError, match="has 4 label sets but the folder holds 5 images"):
        real.score(_scoring(WNIDS), folder)
    (folder / "real.json").write_text(json.dumps([[0], [1, 2], [], [3], [12]]))
    with pytest.raises(ValueError, match="entry 4 .* outside the student's 0..11"):
        real.score(_scoring(WNIDS), folder)
    with pytest.raises(ValueError, match="not sorted"):
        real.score(_scoring(list(reversed(WNIDS))), folder)


def test_real_beside_the_original_labels_in_wnid_folders(tmp_path):
    """The same images under <wnid>/ folders: file-name order across folders; original labels from the folder."""
    folder = tmp_path / "val"
    for number, k, wnid in ((1, 0, 0), (2, 2, 1), (3, 5, 5), (4, 1, 1)):
        (folder / WNIDS[wnid]).mkdir(parents=True, exist_ok=True)
        level = round((k + 0.5) / 12 * 255)
        Image.fromarray(np.full((12, 12, 3), level, dtype=np.uint8)).save(
            folder / WNIDS[wnid] / f"ILSVRC2012_val_{number:08d}.png"
        )
    labels = tmp_path / "real.json"
    labels.write_text(json.dumps([[0], [1, 2], [], [7]]))
    results = real.score(_scoring(WNIDS, real_labels=str(labels)), folder)
    assert results == {"real_accuracy": pytest.approx(2 / 3), "real_original_accuracy": 0.75}


def test_autoattack_is_the_per_image_worst_case_of_its_parts():
    correct = {
        "apgd-ce": torch.tensor([True, True, False, True, True]),
        "apgd-t": torch.tensor([True, False, True, True, True]),
        "fab-t": torch.tensor([True, True, True, True, False]),
        "square": torch.tensor([True, True, True, True, True]),
    }
    results = autoattack.worst_case(correct)
    assert results["autoattack"] == pytest.approx(2 / 5)  # images 0 and 3 survive all four
    assert results["autoattack/square"] == 1 and results["autoattack/apgd-ce"] == pytest.approx(4 / 5)
    assert all(results["autoattack"] <= results[f"autoattack/{name}"] for name in autoattack.PARTS)


def test_autoattack_runs_its_four_parts_on_the_same_images(monkeypatch):
    monkeypatch.setattr(autoattack, "STANDARD_STEPS", 3)
    monkeypatch.setattr(autoattack, "SQUARE_QUERIES", 20)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    images = torch.rand(12, 3, 8, 8)
    with torch.no_grad():
        labels = model(images).argmax(1)
    parts = autoattack.standard_parts(model, 8 / 255, 10, seed=0)
    assert list(parts) == list(autoattack.PARTS)
    assert parts["apgd-t"].n_target_classes == parts["fab-t"].n_target_classes == 9
    results = autoattack.autoattack_accuracy(model, images, labels, 6, 8 / 255, 10, seed=0)
    assert set(results) == {"autoattack", *(f"autoattack/{name}" for name in autoattack.PARTS)}
    assert all(results["autoattack"] <= results[f"autoattack/{name}"] <= 1 for name in autoattack.PARTS)


def test_evaluate_scores_every_set_beside_the_default_data(tmp_path):
    """evaluate_student with --sets: the default data's measures and each set's, in one result."""
    classes = [str(k) for k in range(10)]
    for label in range(9):
        _write(tmp_path / "in9" / "mixed_same" / "val" / IN9[label], [label], 10)
        _write(tmp_path / "in9" / "mixed_rand" / "val" / IN9[label], [0], 10)
    (tmp_path / "map.json").write_text(json.dumps({str(i): (i if i < 9 else -1) for i in range(10)}))
    _write(tmp_path / "a" / "3", [3, 3], 10)
    _write(tmp_path / "a" / "7", [3], 10)
    config = EvaluateConfig(
        attacks=(),
        corruption_samples=0,
        sets=(f"imagenet9:{tmp_path / 'in9'}", f"imagenet-a:{tmp_path / 'a'}"),
        in9_map=str(tmp_path / "map.json"),
    )
    results = evaluate_student(ColorModel(10), DataConfig(), config, resolution=16, classes=classes)
    assert {"clean", "bg_gap", "in9/mixed_same", "in9_bg_gap", "imagenet_a"} <= set(results)
    assert results["in9_bg_gap"] == pytest.approx(1 - 1 / 9) and results["imagenet_a"] == pytest.approx(2 / 3)


def test_set_specs_are_checked_when_the_config_is_made():
    assert parse_set("imagenet-r:/data/imagenet-r")[0] == "imagenet-r" and set(EVALUATION_SETS) >= {"real", "imagenet9"}
    with pytest.raises(ValueError, match="each must be NAME:PATH, one of: imagenet9:PATH"):
        EvaluateConfig(sets=("objectnet:/data",))
    with pytest.raises(ValueError, match="each must be NAME:PATH"):
        EvaluateConfig(sets=("imagenet-a",))


def test_missing_set_files_are_refused_before_any_work(tmp_path):
    for options, message in (
        (
            {"sets": ("imagenet-a:/no/such/folder",)},
            "--sets imagenet-a:/no/such/folder: /no/such/folder does not exist",
        ),
        ({"mce_reference": str(tmp_path / "missing.json")}, "--mce-reference .*missing.json does not exist"),
    ):
        with pytest.raises(FileNotFoundError, match=message):
            evaluate_student(ColorModel(10), DataConfig(), EvaluateConfig(**options), resolution=16)
