"""projects/SFNet/demo.py and visualize_flow.py: inputs (image, folder, video), outputs, errors."""
import os

import cv2
import numpy as np
import pytest
from PIL import Image

import demo
import visualize_flow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "cityscapes", "semantic", "sfnet_lite_R18.yaml")
OPTS = ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"]
H, W = 64, 96


@pytest.fixture(scope="module")
def images(demo_root, tmp_path_factory):
    """Two demo scenes resized to 64x96, in their own folder, plus a non-image file beside."""
    folder = tmp_path_factory.mktemp("demo_inputs")
    src = os.path.join(demo_root, "leftImg8bit", "val", "valcity")
    for name in sorted(os.listdir(src))[:2]:
        Image.open(os.path.join(src, name)).convert("RGB").resize((W, H)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_gives_side_by_side_pictures(images, tmp_path):
    outputs = demo.main(["--config-file", CONFIG, "--input", str(images), "--output",
                         str(tmp_path), "--opts"] + OPTS)
    assert len(outputs) == 2  # the .txt file is not an image
    for out in outputs:
        name = os.path.basename(out)
        picture = np.asarray(Image.open(out))
        assert picture.shape == (H, 2 * W + 4, 3)
        source = np.asarray(Image.open(images / name))
        np.testing.assert_array_equal(picture[:, :W], source)  # left: the input, unchanged
        assert (picture[:, W:W + 4] == 255).all()               # white gap
        assert np.abs(picture[:, W + 4:].astype(int) - source).mean() > 5  # right: an overlay


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
        demo.classify_input(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match=r"notes\.txt.*unsupported extension '\.txt'"):
        demo.classify_input(str(images / "notes.txt"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image"):
        demo.classify_input(str(empty))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(RuntimeError, match="broken.mp4"):
        demo.main(["--config-file", CONFIG, "--input", str(broken), "--output", str(tmp_path),
                   "--opts"] + OPTS)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        demo.main(["--config-file", "nope.yaml", "--input", str(images), "--output", str(tmp_path)])


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


def test_panoptic_config_gives_a_panoptic_overlay_at_the_input_size(images, tmp_path):
    # the K-Net demo config resizes to a shorter side of 128 for the model (INPUT.MIN_SIZE_TEST);
    # the picture stays at the input's size
    config = os.path.join(ROOT, "configs", "demo", "knet_sfnet_STDC1_demo_coco.yaml")
    image = sorted(images.glob("*.png"))[0]
    # an untrained model scores low: keep every kernel and mask so that segments are drawn
    (out,) = demo.main(["--config-file", config, "--input", str(image), "--output", str(tmp_path),
                        "--opts", "MODEL.KNET.TEST.INSTANCE_SCORE_THR", "0.0",
                        "MODEL.KNET.TEST.OVERLAP_THR", "0.0", "MODEL.KNET.TEST.MASK_THR", "0.0"])
    picture = np.asarray(Image.open(out))
    assert picture.shape == (H, 2 * W + 4, 3)
    source = np.asarray(Image.open(image))
    np.testing.assert_array_equal(picture[:, :W], source)
    assert np.abs(picture[:, W + 4:].astype(int) - source).mean() > 5


def test_resize_for_test_follows_the_config_sizes():
    image = np.zeros((64, 96, 3), np.uint8)
    assert demo.resize_for_test(image, 0, 0) is image          # SFNet configs: full resolution
    assert demo.resize_for_test(image, 128, 256).shape == (128, 192, 3)
    assert demo.resize_for_test(image, 128, 150).shape == (100, 150, 3)  # max side bound
