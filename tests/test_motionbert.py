"""`h36m export --format motionbert`, read and scored with MotionBERT's own definitions.

The functions below restate, line for line in substance, MotionBERT's code (github.com/Walter0807/MotionBERT):
`lib/data/datareader_h36m.py` (DataReaderH36M: read_2d, read_3d, read_hw, get_split_id, get_hw, get_sliced_data,
denormalize), `lib/utils/utils_data.py` (split_clips, resample), `lib/utils/tools.py` (read_pkl: a plain
pickle.load) and the scoring part of `train.py`'s evaluate (denormalise, x 2.5d_factor, root-relative MPJPE). They are
not imported from this project, so the test checks our file against MotionBERT's reading, not against our writer.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from click.testing import CliRunner

from fixtures_shard import extracted  # noqa: F401  (fixture)
from h36m.cli import main
from h36m.h36m_tools import cdf
from h36m.h36m_tools.cameras import CAMERA_IDS, bundled, project, world_to_camera
from h36m.h36m_tools.names import discover
from h36m.h36m_tools.skeleton import to17


# ----- MotionBERT's definitions ----------------------------------------------------------------------------------
def mb_res(camera_name):
    if camera_name == '54138969' or camera_name == '60457274':
        return 1000, 1002
    if camera_name == '55011271' or camera_name == '58860488':
        return 1000, 1000
    raise AssertionError('invalid camera name')


def mb_resample(ori_len, target_len, randomness=True):
    even = np.linspace(0, ori_len, num=target_len, endpoint=False)
    if ori_len < target_len:
        low, high = np.floor(even), np.ceil(even)
        sel = np.random.randint(2, size=even.shape)
        result = np.sort(sel * low + (1 - sel) * high)
    else:
        interval = even[1] - even[0]
        result = np.random.random(even.shape) * interval + even
    return np.clip(result, a_min=0, a_max=ori_len - 1).astype(np.uint32)


def mb_split_clips(vid_list, n_frames, data_stride):
    result, st, i, saved = [], 0, 0, set()
    while i < len(vid_list):
        i += 1
        if i - st == n_frames:
            result.append(range(st, i))
            saved.add(vid_list[i - 1])
            st = st + data_stride
        if i == len(vid_list):
            break
        if vid_list[i] != vid_list[i - 1]:
            if not (vid_list[i - 1] in saved):
                result.append(mb_resample(i - st, n_frames) + st)
                saved.add(vid_list[i - 1])
            st = i
    return result


class MBDataReaderH36M:
    def __init__(self, path, n_frames, sample_stride=1, data_stride_train=81, data_stride_test=243):
        with open(path, 'rb') as f:                                   # read_pkl
            self.dt_dataset = pickle.load(f)
        self.n_frames, self.sample_stride = n_frames, sample_stride
        self.data_stride_train, self.data_stride_test = data_stride_train, data_stride_test
        self.split_id_train = self.split_id_test = self.test_hw = None

    def read_2d(self):
        out = []
        for split in ('train', 'test'):
            d = self.dt_dataset[split]
            xy = d['joint_2d'][::self.sample_stride, :, :2].astype(np.float32)
            for idx, camera_name in enumerate(d['camera_name']):
                res_w, res_h = mb_res(camera_name)
                xy[idx, :, :] = xy[idx, :, :] / res_w * 2 - [1, res_h / res_w]
            conf = d['confidence'][::self.sample_stride].astype(np.float32)
            if len(conf.shape) == 2:
                conf = conf[:, :, None]
            out.append(np.concatenate((xy, conf), axis=2))
        return out

    def read_3d(self):
        out = []
        for split in ('train', 'test'):
            d = self.dt_dataset[split]
            lab = d['joint3d_image'][::self.sample_stride, :, :3].astype(np.float32)
            for idx, camera_name in enumerate(d['camera_name']):
                res_w, res_h = mb_res(camera_name)
                lab[idx, :, :2] = lab[idx, :, :2] / res_w * 2 - [1, res_h / res_w]
                lab[idx, :, 2:] = lab[idx, :, 2:] / res_w * 2
            out.append(lab)
        return out

    def read_hw(self):
        return np.array([mb_res(c) for c in self.dt_dataset['test']['camera_name']], float)

    def get_split_id(self):
        if self.split_id_train is None:
            self.split_id_train = mb_split_clips(self.dt_dataset['train']['source'][::self.sample_stride],
                                                 self.n_frames, self.data_stride_train)
            self.split_id_test = mb_split_clips(self.dt_dataset['test']['source'][::self.sample_stride],
                                                self.n_frames, self.data_stride_test)
        return self.split_id_train, self.split_id_test

    def get_hw(self):
        return self.read_hw()[self.get_split_id()[1]][:, 0, :]

    def get_sliced_data(self):
        train_data, test_data = self.read_2d()
        train_labels, test_labels = self.read_3d()
        tr, te = self.get_split_id()
        return train_data[tr], test_data[te], train_labels[tr], test_labels[te]

    def denormalize(self, test_data):
        n_clips = test_data.shape[0]
        test_hw = self.get_hw()
        data = test_data.reshape([n_clips, -1, 17, 3])
        assert len(data) == len(test_hw)
        for idx, item in enumerate(data):
            res_w, res_h = test_hw[idx]
            data[idx, :, :, :2] = (data[idx, :, :, :2] + np.array([1, res_h / res_w])) * res_w / 2
            data[idx, :, :, 2:] = data[idx, :, :, 2:] * res_w / 2
        return data


def mb_mpjpe(predicted, target):
    return np.mean(np.linalg.norm(predicted - target, axis=len(target.shape) - 1), axis=1)


def mb_trained_target(batch_gt, rootrel):
    """train.py's train_epoch: what the network learns to output for labels batch_gt (N, T, 17, 3)."""
    batch_gt = batch_gt.copy()
    if rootrel:
        return batch_gt - batch_gt[:, :, 0:1, :]
    batch_gt[:, :, :, 2] = batch_gt[:, :, :, 2] - batch_gt[:, 0:1, 0:1, 2]
    return batch_gt


def mb_score(datareader, results_all, rootrel=True):
    """train.py's evaluate after the network: per clip, denormalise, x 2.5d_factor, root-relative MPJPE against
    joints_2.5d_image; returns the scaled root-relative predictions per clip and MotionBERT's per-clip errors."""
    if rootrel:
        results_all[:, :, 0, :] = 0
    results_all = datareader.denormalize(results_all)
    _, split_id_test = datareader.get_split_id()
    d = datareader.dt_dataset['test']
    factors, gts, sources = np.array(d['2.5d_factor']), np.array(d['joints_2.5d_image']), np.array(d['source'])
    frames = np.array(range(len(d['action'])))
    block_list = ['s_09_act_05_subact_02', 's_09_act_10_subact_02', 's_09_act_13_subact_01']
    preds, errs, frame_ids, blocked = [], [], [], 0
    for idx in range(len(split_id_test)):
        if sources[split_id_test[idx]][0][:-6] in block_list:
            blocked += 1
            continue
        factor = factors[split_id_test[idx]][:, None, None]
        gt, pred = gts[split_id_test[idx]], results_all[idx] * factor
        pred = pred - pred[:, 0:1, :]
        gt = gt - gt[:, 0:1, :]
        preds.append(pred)
        errs.append(mb_mpjpe(pred, gt))
        frame_ids.append(frames[split_id_test[idx]])
    return preds, errs, frame_ids, blocked


# ----- the tests ------------------------------------------------------------------------------------------------
def _camera_frame_truth(release):
    """Per test row of the file: our camera-frame 3-D (mm), from the release's CDFs and the bundled cameras."""
    cams = bundled()
    out = {}
    for f in discover(release):
        if f.d3 is None:
            continue
        world = to17(cdf.read_pose(f.d3, 3))
        for i, c in enumerate(CAMERA_IDS):
            cam = cams.camera(f.subject, c)
            out[(f.subject, f.name, c)] = (world_to_camera(world, cam.extrinsics.R, cam.extrinsics.t), cam)
    return out


@pytest.mark.parametrize("n_frames", [27, 243])
def test_motionbert_reads_and_scores_our_export_back_to_camera_millimetres(small_release, tmp_path, n_frames):
    res = CliRunner().invoke(main, ["export", str(small_release), str(tmp_path), "--format", "motionbert"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "left out S11/Directions" in res.output
    np.random.seed(0)
    reader = MBDataReaderH36M(tmp_path / "h36m_sh_conf_cam_source_final.pkl", n_frames)
    train_data, test_data, train_labels, test_labels = reader.get_sliced_data()
    d = reader.dt_dataset
    assert set(d) == {"train", "test"}
    assert len(d["train"]["source"]) == 2 * 4 * 40 and len(d["test"]["source"]) == 4 * 40   # S1, S5 / S9
    assert train_data.shape[1:] == (n_frames, 17, 3) and test_labels.shape[1:] == (n_frames, 17, 3)

    truth = _camera_frame_truth(small_release)
    names = {(f.subject, int(f.subaction)): f.name for f in discover(small_release)}
    row_truth = []
    for src, cam in zip(d["test"]["source"], d["test"]["camera_name"]):
        subject, subaction = f"S{int(src[2:4])}", int(src[19:21])
        assert CAMERA_IDS[int(src[-2:]) - 1] == cam
        row_truth.append((subject, names[(subject, subaction)], cam))
    # the 2-D input: MotionBERT's normalisation of the projection in the camera's nominal frame, confidences 1
    for split, data_rows in (("test", d["test"]),):
        start = 0
        for src in dict.fromkeys(data_rows["source"]):
            n = data_rows["source"].count(src)
            key = row_truth[start]
            cam3d, cam = truth[key]
            np.testing.assert_allclose(data_rows["joint_2d"][start:start + n], project(cam3d, cam.intrinsics),
                                       atol=1e-3)
            start += n
    assert np.all(test_data[..., 2] == 1)
    w, h = mb_res(d["test"]["camera_name"][0])
    assert np.abs(test_data[..., :2]).max() < max(1, h / w) + 0.01

    # a perfect network (it outputs what train.py trains it to) scored by MotionBERT: 0 mm, and our camera-frame
    # millimetres within 1 mm
    preds, errs, frame_ids, blocked = mb_score(reader, mb_trained_target(test_labels, True), rootrel=True)
    assert blocked == 0 and len(preds) == len(test_labels)
    assert max(e.max() for e in errs) < 1e-3
    cam_rows = {}
    for i, key in enumerate(row_truth):
        cam_rows.setdefault(key, []).append(i)
    frame_truth = np.zeros((len(row_truth), 17, 3))
    for key, rows in cam_rows.items():
        frame_truth[rows] = truth[key][0]
    for pred, ids in zip(preds, frame_ids):
        gt = frame_truth[ids] - frame_truth[ids][:, :1]
        assert np.abs(pred - gt).max() < 1.0                    # mm, every joint of every frame


def test_motionbert_export_from_an_extracted_dataset_and_a_2d_file(extracted, tmp_path):
    from h36m.pipelines.extract.dataset import list_sequences, read_sequence
    from h36m.h36m_tools.cameras import Camera, nominal_camera
    from h36m.pipelines.interchange.motionbert import MotionBertConfig, export_motionbert
    from h36m.pipelines.interchange.npzfile import vp3d_action

    # a 2-D file in the nominal frame with confidences (the shape of `h36m predict`'s output)
    pos2d, conf2d, truth = {}, {}, {}
    for path in list_sequences(extracted):
        meta, a = read_sequence(path, with_jpeg=False)
        if len(meta.cameras) < 4:
            continue
        action = vp3d_action(meta.sequence)
        views = [project(a.pose3d_cam[:, v].astype(float), nominal_camera(Camera.from_dict(meta.camera_params[v]))[0].intrinsics)
                 for v in range(4)]
        pos2d.setdefault(meta.subject, {})[action] = [(x + 2.0).astype(np.float32) for x in views]
        conf2d.setdefault(meta.subject, {})[action] = [np.full((len(x), 17), 0.5, np.float32) for x in views]
        truth[meta.subject] = a.pose3d_cam
    kp = tmp_path / "det.npz"
    np.savez_compressed(kp, positions_2d=pos2d, confidence_2d=conf2d,
                        metadata={"layout_name": "h36m", "num_joints": 17,
                                  "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]})
    res = export_motionbert(MotionBertConfig(src=extracted, out=tmp_path / "mb", keypoints=str(kp)))
    assert "S11/Directions" in res.skipped and res.rows == {"train": 2 * 4 * 40, "test": 4 * 40}
    reader = MBDataReaderH36M(res.file, 27)
    train_data, test_data, _, test_labels = reader.get_sliced_data()
    assert np.all(train_data[..., 2] == 0.5)
    d = reader.dt_dataset["test"]
    k = bundled().camera("S9", CAMERA_IDS[0]).intrinsics
    np.testing.assert_allclose(d["joint_2d"][:40], project(truth["S9"][:, 0].astype(float), k) + 2.0, atol=1e-3)
    preds, errs, frame_ids, _ = mb_score(reader, mb_trained_target(test_labels, False), rootrel=False)
    for pred, ids in zip(preds, frame_ids):
        cam = np.concatenate([truth["S9"][:, v] for v in range(4)])[ids].astype(float)
        assert np.abs(pred - (cam - cam[:, :1])).max() < 1.0


def test_motionbert_export_refuses_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["export", str(tmp_path / "empty"), str(tmp_path / "o"), "--format", "motionbert"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "empty" in res.output
