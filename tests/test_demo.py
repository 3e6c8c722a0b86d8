"""projects/SFNet/demo.py and visualize_flow.py (sfnet_d2/visualization/demo.py): inputs (image,
folder, video), outputs, unreadable images, errors."""
import os

import cv2
import numpy as np
import pytest
from helpers import ROOT, run_command
from PIL import Image

from sfnet_d2.engine import MissingWeightsError, Predictor, build_config
from sfnet_d2.visualization.demo import (SkippedInputsError, VisualizationDemo, build_demo_config,
                                         check_output_folder, classify_input,
                                         image_as_the_model_sees_it)

CONFIG = os.path.join(ROOT, "configs", "cityscapes", "semantic", "sfnet_lite_R18.yaml")
KNET_CONFIG = os.path.join(ROOT, "configs", "demo", "knet_sfnet_STDC1_demo_coco.yaml")
# an untrained model, asked for on purpose: an empty MODEL.WEIGHTS is an error
OPTS = ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.WEIGHTS", "random"]
H, W = 64, 96
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # the subprocesses share the machine with pytest


def _run(name, *args):
    """``projects/SFNet/<name>.py *args``, which must succeed."""
    proc = run_command(name, *args, env=ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def _error_line(proc, name):
    """The command's one error line, after checking its exit status and that no traceback came."""
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr[proc.stderr.index(f"{name}.py: error:"):].splitlines()[0]


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
    _run("demo", "--config-file", CONFIG, "--input", images, "--output", tmp_path, "--opts", *OPTS)
    # one picture per image, named after it: the .txt file is not an image
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in images.glob("*.png"))
    assert len(os.listdir(tmp_path)) == 2
    for name in os.listdir(tmp_path):
        _check_side_by_side(tmp_path / name, images / name)


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
    # what demo.py runs (its exit status and message: the test below)
    _, files = classify_input(str(folder))
    out = check_output_folder(str(tmp_path / "out"))
    demo = VisualizationDemo(Predictor(build_demo_config(CONFIG, OPTS), purpose="the demo"))
    with pytest.raises(SkippedInputsError) as info:
        demo.process_images(files, out)
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
    proc = run_command("demo", "--config-file", CONFIG, "--input", folder, "--output", out,
                       "--opts", *OPTS, env=ENV)
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
    _run("demo", "--config-file", CONFIG, "--input", video, "--output", tmp_path / "out",
         "--max-frames", "3", "--opts", *OPTS)
    assert os.listdir(tmp_path / "out") == ["clip.mp4"]
    capture = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (H, 2 * W + 4, 3)
    # lossy codec: the left half is the input frame up to compression noise
    assert np.abs(frame[:, :W].astype(int) - frames[0]).mean() < 12


def test_bad_inputs_are_named(images, tmp_path):
    # the checks demo.py makes before it builds the model (the command's message: the test below)
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
    assert classify_input(str(broken)) == ("video", [str(broken)])  # opened by the model's run
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        build_demo_config("nope.yaml")
    # --output naming an existing file: refused, naming it
    afile = tmp_path / "pictures.png"
    afile.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=r"--output .*pictures\.png.*pass a folder"):
        check_output_folder(str(afile))
    new = tmp_path / "new" / "dir"
    assert check_output_folder(str(new)) and new.is_dir()
    demo = VisualizationDemo(Predictor(build_demo_config(CONFIG, OPTS), purpose="the demo"))
    with pytest.raises(OSError, match="broken.mp4.*cannot open"):
        demo.process_video(str(broken), str(tmp_path))


@pytest.mark.slow
def test_command_line_messages_for_bad_inputs(images, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    proc = run_command("demo", "--config-file", CONFIG, "--input", broken, "--output", tmp_path,
                       "--opts", *OPTS, env=ENV)
    assert _error_line(proc, "demo").startswith(f"demo.py: error: --input {broken}: OpenCV "
                                                "cannot open this video")
    proc = run_command("demo", "--config-file", "nope.yaml", "--input", images, "--output",
                       tmp_path, env=ENV)
    assert _error_line(proc, "demo") == "demo.py: error: --config-file nope.yaml does not exist"
    # --output naming an existing file: refused before the model is built, naming it
    afile = tmp_path / "pictures.png"
    afile.write_bytes(b"")
    proc = run_command("demo", "--config-file", CONFIG, "--input", images, "--output", afile,
                       "--opts", *OPTS, env=ENV)
    assert _error_line(proc, "demo").startswith(f"demo.py: error: --output {afile} is an "
                                                "existing file, not a folder: pass a folder")
    assert afile.read_bytes() == b""


def test_weights_are_required_and_read_safely():
    cfg = build_demo_config(CONFIG, OPTS[:-2])  # without MODEL.WEIGHTS
    # the predictors of demo.py and visualize_flow.py (their messages: the test below)
    with pytest.raises(MissingWeightsError, match="MODEL.WEIGHTS is empty: the demo"):
        Predictor(cfg, purpose="the demo")
    with pytest.raises(MissingWeightsError, match="MODEL.WEIGHTS is empty: the flow pictures"):
        Predictor(cfg, optimize=False, purpose="the flow pictures")


@pytest.mark.slow
def test_commands_refuse_an_empty_model_weights(images, tmp_path):
    base = OPTS[:-2]  # without MODEL.WEIGHTS
    proc = run_command("demo", "--config-file", CONFIG, "--input", images, "--output",
                       tmp_path / "a", "--opts", *base, env=ENV)
    assert "MODEL.WEIGHTS is empty: the demo" in _error_line(proc, "demo")
    assert not os.listdir(tmp_path / "a")  # nothing drawn
    proc = run_command("visualize_flow", "--config-file", CONFIG, "--input", images, "--output",
                       tmp_path / "b", "--opts", *base, env=ENV)
    assert "MODEL.WEIGHTS is empty: the flow pictures" in _error_line(proc, "visualize_flow")


@pytest.mark.slow
def test_visualize_flow_command(images, tmp_path):
    image = sorted(images.glob("*.png"))[0]
    _run("visualize_flow", "--config-file", CONFIG, "--input", image, "--output", tmp_path,
         "--opts", *OPTS)
    stem = os.path.splitext(image.name)[0]
    # SFNet-Lite: one GD-FAM at stride 4 with its two flows; the overview and the legend
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["color_wheel.png", f"{stem}_overview.png"]
        + [f"{stem}_stage1_s4_{kind}.png"
           for kind in ("arrows", "arrows_fine", "features", "flow", "flow_fine")])
    assert Image.open(tmp_path / f"{stem}_stage1_s4_flow.png").size == (W, H)
    # image | flow | arrows | prediction
    assert Image.open(tmp_path / f"{stem}_overview.png").size == (4 * W + 3 * 4, H)


@pytest.mark.slow
def test_panoptic_config_gives_a_panoptic_overlay_at_the_input_size(images, tmp_path):
    # the K-Net demo config resizes to a shorter side of 128 for the model (INPUT.MIN_SIZE_TEST);
    # the picture stays at the input's size
    image = sorted(images.glob("*.png"))[0]
    # an untrained model scores low: keep every kernel and mask so that segments are drawn
    _run("demo", "--config-file", KNET_CONFIG, "--input", image, "--output", tmp_path,
         "--opts", "MODEL.WEIGHTS", "random", "MODEL.KNET.TEST.INSTANCE_SCORE_THR", "0.0",
         "MODEL.KNET.TEST.OVERLAP_THR", "0.0", "MODEL.KNET.TEST.MASK_THR", "0.0")
    assert os.listdir(tmp_path) == [image.name]
    _check_side_by_side(tmp_path / image.name, image)


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
