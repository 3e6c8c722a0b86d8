"""projects/SFNet/demo.py and visualize_flow.py (sfnet_d2/visualization/demo.py): inputs (image,
folder, video), outputs, unreadable images, errors."""
import importlib.util
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from sfnet_d2.engine import MissingWeightsError, Predictor, build_config
from sfnet_d2.visualization.demo import (SkippedInputsError, check_output_folder, classify_input,
                                         image_as_the_model_sees_it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "cityscapes", "semantic", "sfnet_lite_R18.yaml")
KNET_CONFIG = os.path.join(ROOT, "configs", "demo", "knet_sfnet_STDC1_demo_coco.yaml")
# an untrained model, asked for on purpose: an empty MODEL.WEIGHTS is an error
OPTS = ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.WEIGHTS", "random"]
H, W = 64, 96


def _command(name):
    """A command of projects/SFNet (scripts, not a package), imported from its file."""
    spec = importlib.util.spec_from_file_location(
        f"sfnet_command_{name}", os.path.join(ROOT, "projects", "SFNet", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _command("demo")
visualize_flow = _command("visualize_flow")


@pytest.fixture(scope="module")
def images(demo_root, tmp_path_factory):
    """Two demo scenes resized to 64x96, in their own folder, plus a non-image file beside."""
    folder = tmp_path_factory.mktemp("demo_inputs")
    src = os.path.join(demo_root, "leftImg8bit", "val", "valcity")
    for name in sorted(os.listdir(src))[:2]:
        Image.open(os.path.join(src, name)).convert("RGB").resize((W, H)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def _check_side_by_side(path, source_path):
    picture = np.asarray(Image.open(path))
    assert picture.shape == (H, 2 * W + 4, 3)
    source = np.asarray(Image.open(source_path))
    np.testing.assert_array_equal(picture[:, :W], source)  # left: the input, unchanged
    assert (picture[:, W:W + 4] == 255).all()               # white gap
    assert np.abs(picture[:, W + 4:].astype(int) - source).mean() > 5  # right: an overlay


@pytest.mark.slow
def test_folder_gives_side_by_side_pictures(images, tmp_path):
    outputs = demo.main(["--config-file", CONFIG, "--input", str(images), "--output",
                         str(tmp_path), "--opts"] + OPTS)
    assert len(outputs) == 2  # the .txt file is not an image
    for out in outputs:
        _check_side_by_side(out, images / os.path.basename(out))


@pytest.mark.slow
def test_unreadable_images_are_skipped_named_and_listed(images, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    good = sorted(images.glob("*.png"))
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    data = good[0].read_bytes()
    (folder / "a_truncated.png").write_bytes(data[: len(data) // 3])
    (folder / "b_not_an_image.jpg").write_text("plain text")
    with pytest.raises(SkippedInputsError) as info:
        demo.main(["--config-file", CONFIG, "--input", str(folder), "--output",
                   str(tmp_path / "out"), "--opts"] + OPTS)
    error = info.value
    assert [os.path.basename(p) for p, _ in error.skipped] == ["a_truncated.png",
                                                               "b_not_an_image.jpg"]
    assert "a_truncated.png" in str(error) and "b_not_an_image.jpg" in str(error)
    # the readable images after the bad ones were processed all the same
    assert sorted(os.path.basename(p) for p in error.written) == sorted(p.name for p in good)
    for out in error.written:
        _check_side_by_side(out, folder / os.path.basename(out))


@pytest.mark.slow
def test_command_line_exit_status_and_message_for_skipped_images(images, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    good = sorted(images.glob("*.png"))[0]
    (folder / good.name).write_bytes(good.read_bytes())
    (folder / "broken.png").write_bytes(good.read_bytes()[:200])
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "projects", "SFNet", "demo.py"), "--config-file",
         CONFIG, "--input", str(folder), "--output", str(out), "--opts"] + OPTS,
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    # the warning while running (the log, on stdout), then the error and the list at the end
    assert "Skipping" in proc.stdout and "broken.png" in proc.stdout
    error = proc.stderr[proc.stderr.index("demo.py: error:"):].splitlines()
    assert error[0].startswith("demo.py: error: 1 input file(s) could not be read and were "
                               "skipped (1 picture(s) written)")
    assert error[1].strip().startswith(str(folder / "broken.png"))
    assert "Traceback" not in proc.stderr
    assert (out / good.name).is_file()


@pytest.mark.slow
def test_video_gives_an_mp4_with_side_by_side_frames(images, tmp_path):
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (W, H))
    frames = [cv2.imread(str(p)) for p in sorted(images.glob("*.png"))]
    for f in frames + frames:
        writer.write(f)
    writer.release()
    (out,) = demo.main(["--config-file", CONFIG, "--input", video, "--output",
                        str(tmp_path / "out"), "--max-frames", "3", "--opts"] + OPTS)
    assert out.endswith("clip.mp4")
    capture = cv2.VideoCapture(out)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (H, 2 * W + 4, 3)
    # lossy codec: the left half is the input frame up to compression noise
    assert np.abs(frame[:, :W].astype(int) - frames[0]).mean() < 12


def test_bad_inputs_are_named(images, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        classify_input(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match=r"notes\.txt.*unsupported extension '\.txt'"):
        classify_input(str(images / "notes.txt"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image"):
        classify_input(str(empty))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(OSError, match="broken.mp4.*cannot open"):
        demo.main(["--config-file", CONFIG, "--input", str(broken), "--output", str(tmp_path),
                   "--opts"] + OPTS)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        demo.main(["--config-file", "nope.yaml", "--input", str(images), "--output", str(tmp_path)])
    # --output naming an existing file: refused before the model is built, naming it
    afile = tmp_path / "pictures.png"
    afile.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=r"--output .*pictures\.png.*pass a folder"):
        demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(afile),
                   "--opts"] + OPTS)
    assert check_output_folder(str(tmp_path / "new" / "dir")) and (tmp_path / "new" / "dir").is_dir()


def test_weights_are_required_and_read_safely(images, tmp_path):
    base = OPTS[:-2]  # without MODEL.WEIGHTS
    with pytest.raises(MissingWeightsError, match="MODEL.WEIGHTS is empty: the demo"):
        demo.main(["--config-file", CONFIG, "--input", str(images), "--output",
                   str(tmp_path / "a"), "--opts"] + base)
    assert not os.listdir(tmp_path / "a")  # nothing drawn
    with pytest.raises(MissingWeightsError, match="MODEL.WEIGHTS is empty: the flow pictures"):
        visualize_flow.main(["--config-file", CONFIG, "--input", str(images), "--output",
                             str(tmp_path / "b"), "--opts"] + base)


@pytest.mark.slow
def test_visualize_flow_command(images, tmp_path):
    (paths,) = visualize_flow.main(["--config-file", CONFIG, "--input",
                                    str(sorted(images.glob("*.png"))[0]), "--output",
                                    str(tmp_path), "--opts"] + OPTS)
    # SFNet-Lite: one GD-FAM at stride 4 with its two flows
    assert sorted(k for k in paths if k.startswith("stage")) == [
        "stage1_arrows", "stage1_arrows_fine", "stage1_features", "stage1_flow", "stage1_flow_fine"]
    assert Image.open(paths["stage1_flow"]).size == (W, H)
    assert os.path.basename(paths["stage1_flow"]).endswith("_stage1_s4_flow.png")
    # image | flow | arrows | prediction
    assert Image.open(paths["overview"]).size == (4 * W + 3 * 4, H)


@pytest.mark.slow
def test_panoptic_config_gives_a_panoptic_overlay_at_the_input_size(images, tmp_path):
    # the K-Net demo config resizes to a shorter side of 128 for the model (INPUT.MIN_SIZE_TEST);
    # the picture stays at the input's size
    image = sorted(images.glob("*.png"))[0]
    # an untrained model scores low: keep every kernel and mask so that segments are drawn
    (out,) = demo.main(["--config-file", KNET_CONFIG, "--input", str(image), "--output",
                        str(tmp_path), "--opts", "MODEL.WEIGHTS", "random",
                        "MODEL.KNET.TEST.INSTANCE_SCORE_THR", "0.0",
                        "MODEL.KNET.TEST.OVERLAP_THR", "0.0", "MODEL.KNET.TEST.MASK_THR", "0.0"])
    _check_side_by_side(out, image)


def test_the_model_sees_the_config_test_size():
    image = np.zeros((64, 96, 3), np.uint8)
    # SFNet configs: full resolution (INPUT.MIN_SIZE_TEST 0)
    sfnet = Predictor(build_config(CONFIG, ["MODEL.DEVICE", "cpu"] + OPTS), optimize=False)
    assert image_as_the_model_sees_it(sfnet, image) is image
    knet = Predictor(build_config(KNET_CONFIG, ["MODEL.WEIGHTS", "random"]), optimize=False)
    assert image_as_the_model_sees_it(knet, image).shape == (128, 192, 3)  # shorter side 128
    knet = Predictor(build_config(KNET_CONFIG, ["MODEL.WEIGHTS", "random",
                                                "INPUT.MAX_SIZE_TEST", "150"]), optimize=False)
    assert image_as_the_model_sees_it(knet, image).shape == (100, 150, 3)  # longer side bound
