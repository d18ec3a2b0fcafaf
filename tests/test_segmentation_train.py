"""Training from motion: the loss goes down on synthetic moving objects; resume; explaining away."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from perception_nodes.segmentation.config import EisenConfig
from perception_nodes.segmentation.train import (
    PairData,
    TrainConfig,
    episode_background,
    episode_still,
    episode_vacated,
    explain_away,
    initial_targets,
    instance_targets,
    motion_mask,
    motion_segments,
    to_map,
    train,
)

TINY = {
    "input_size": [128, 128],
    "stem_channels": 16,
    "stage_blocks": [1, 1, 1, 1],
    "width": 8,
    "aspp_channels": 32,
    "project_channels": [8, 16],
    "decoder_channels": 32,
}


def _synthetic_pairs(n: int = 12, size: int = 128) -> PairData:
    """Textured background with a textured square that moves by 3 px; motion from DIS flow."""
    rng = np.random.default_rng(0)
    images, motion, inst = [], [], []
    for _ in range(n):
        bg = cv2.resize(
            rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_NEAREST
        )
        tex = cv2.resize(
            rng.integers(0, 255, (6, 6, 3), dtype=np.uint8), (36, 36), interpolation=cv2.INTER_NEAREST
        )
        y, x = rng.integers(10, size - 50, 2)
        frames = []
        for dx in (0, 3):
            img = bg.copy()
            img[y : y + 36, x + dx : x + dx + 36] = tex
            frames.append(img)
        moving = motion_mask(frames[0], frames[1], threshold=0.5)
        truth = np.zeros((size, size), np.uint16)
        truth[y : y + 36, x : x + 36] = 1
        images.append(frames[0])
        motion.append(to_map(moving, (size // 4, size // 4)))
        inst.append(truth)
    background = np.stack([episode_background([m], margin=2) for m in motion])  # one pair per "episode"
    return PairData(np.stack(images), np.stack(motion), np.stack(inst), background)


def _tiny_config(out, **changes) -> dict:
    """TrainConfig fields of a short run of the tiny network (no bootstrapping unless changed)."""
    fields = dict(out=str(out), steps=24, batch=4, lr=2e-3, warmup=4, bootstrap_at=(), threads=1)
    return {**fields, "overrides": json.dumps(TINY), **changes}


def test_dis_motion_mask_finds_the_moving_square():
    pairs = _synthetic_pairs(2)
    truth = pairs.instance[0][::4, ::4] > 0
    found = pairs.motion[0]
    assert (found & truth).sum() / truth.sum() > 0.7
    assert (found & ~truth).sum() < truth.sum()  # DIS smears motion into a halo: precision >= 0.5


def test_training_lowers_the_loss_and_resumes(tmp_path):
    torch.set_num_threads(1)
    pairs = _synthetic_pairs()
    base = _tiny_config(tmp_path, ckpt_every=12)
    summary = train(TrainConfig(**base), progress=False, pairs=pairs)
    losses = summary["losses"]
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < 0.85 * np.mean(losses[:6]), losses
    assert (tmp_path / "eisen.safetensors").exists()
    cfg = EisenConfig.from_json((tmp_path / "eisen.json").read_text())
    assert cfg.input_size == (128, 128)
    resumed = train(TrainConfig(**{**base, "steps": 28, "resume": True}), progress=False, pairs=pairs)
    assert len(resumed["losses"]) == 4  # continued from step 24
    assert json.loads((tmp_path / "train_state.json").read_text())["step"] == 28


def test_bfloat16_training_follows_float32_and_saves_float32_weights(tmp_path):
    torch.set_num_threads(1)
    pairs = _synthetic_pairs()
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        runs[precision] = train(
            TrainConfig(**_tiny_config(out, precision=precision)), progress=False, pairs=pairs
        )
    fp32, bf16 = runs["fp32"]["losses"], runs["bf16"]["losses"]
    assert 0 < abs(bf16[0] - fp32[0]) < 0.02 * fp32[0]  # same weights and batch: only rounding differs
    assert np.mean(bf16[-6:]) < 0.85 * np.mean(bf16[:6]), bf16
    weights = load_file(str(tmp_path / "bf16" / "eisen.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(out=str(tmp_path), precision="fp16")


def test_bfloat16_training_warns_on_a_cpu_without_native_bfloat16(monkeypatch, caplog):
    from perception_nodes.segmentation.train import _check_bf16

    for native, warned in ((True, False), (False, True)):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        caplog.clear()
        _check_bf16("cpu")
        assert ("without native bfloat16" in caplog.text) == warned


def test_instance_targets_give_every_object_one_id_and_the_floor_the_background():
    inst = np.zeros((2, 16, 16), np.uint16)
    inst[0, :8, :8], inst[0, 8:, 8:] = 7, 3  # two objects on the floor
    inst[1] = 5  # one object filling the frame: no background
    inst[1, :, 8:] = 9
    ids, background = instance_targets(inst, (8, 8))
    assert ids.dtype == np.uint8 and ids.shape == background.shape == (2, 8, 8)
    assert (ids[0][:4, :4] == ids[0][0, 0]).all() and (ids[0][4:, 4:] == ids[0][7, 7]).all()
    assert len({ids[0][0, 0], ids[0][7, 7], 0}) == 3 and (ids[0][background[0]] == 0).all()
    assert background[0].sum() == 32 and not background[1].any()
    assert set(np.unique(ids[1])) == {1, 2}  # objects never take the unlabelled id 0


def test_instance_supervision_trains_on_ground_truth_without_bootstrapping(tmp_path):
    torch.set_num_threads(1)
    pairs = _synthetic_pairs()
    pairs = dataclasses.replace(pairs, motion=np.zeros_like(pairs.motion))  # no motion at all
    tcfg = TrainConfig(**_tiny_config(tmp_path, steps=16, bootstrap_at=(0.5,), supervision="instances"))
    summary = train(tcfg, progress=False, pairs=pairs)
    losses = summary["losses"]
    assert np.mean(losses[-4:]) < 0.85 * np.mean(losses[:4]), losses
    saved = json.loads((tmp_path / "train_summary.json").read_text())["train_config"]
    assert saved["bootstrap_at"] == [] and saved["still_objects"] == 0.0
    with pytest.raises(ValueError, match="supervision"):
        TrainConfig(out=str(tmp_path), supervision="labels")


def test_explain_away_gives_confident_segments_their_own_id():
    moving = np.zeros((20, 20), bool)
    moving[2:10, 2:18] = True  # pusher (left) + pushed object (right) move together
    segments = np.zeros((20, 20), np.int32)
    segments[2:10, 2:8] = 4  # the model already knows the pusher
    segments[0:20, 12:20] = 9  # a segment mostly static: not explained away
    out = explain_away(segments, moving, purity=0.8)
    assert (out[2:10, 2:8] == 2).all()
    assert (out[2:10, 8:18] == 1).all()
    assert (out[~moving] == 0).all()


def test_explain_away_needs_a_stable_segment():
    moving = np.zeros((20, 20), bool)
    moving[2:10, 2:18] = True
    first = np.zeros((20, 20), np.int32)
    first[2:10, 2:8] = 4
    unstable = np.zeros((20, 20), np.int32)
    unstable[2:6, 2:18] = 1  # a second draw cuts the scene differently: no confident segment
    assert (explain_away(first, moving, 0.8, unstable) <= 1).all()
    stable = np.where(first == 4, 7, 0)
    assert (explain_away(first, moving, 0.8, stable)[2:10, 2:8] == 2).all()


def _shadow_pair(size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A square with a colour texture moves 3 px right over a textured grey-green floor and casts a shadow
    (the floor darkened to 55 %: same chromaticity) 20 px below it that moves with it.
    -> frames, square, shadow."""
    rng = np.random.default_rng(1)
    floor = cv2.resize(rng.integers(60, 200, (16, 16), dtype=np.uint8), (size, size), cv2.INTER_NEAREST)
    floor = np.stack([floor, floor * 1.1, floor * 0.9], -1).clip(0, 255).astype(np.uint8)
    tex = cv2.resize(rng.integers(40, 255, (6, 6, 3), dtype=np.uint8), (30, 30), cv2.INTER_NEAREST)
    frames, square, shadow = [], np.zeros((2, size, size), bool), np.zeros((2, size, size), bool)
    for i, dx in enumerate((0, 3)):
        img = floor.copy()
        shadow[i, 60:90, 40 + dx : 70 + dx] = True
        img[shadow[i]] = (img[shadow[i]] * 0.55).astype(np.uint8)
        square[i, 20:50, 40 + dx : 70 + dx] = True
        img[square[i]] = tex.reshape(-1, 3)
        frames.append(img)
    return frames[0], frames[1], square.any(0), shadow.any(0)


def test_chroma_support_drops_a_moving_shadow_and_keeps_the_object():
    f0, f1, square, shadow = _shadow_pair()
    plain = motion_mask(f0, f1, 0.5)
    supported = motion_mask(f0, f1, 0.5, chroma_support=0.03, support_radius=1)
    assert (plain & shadow).sum() > 0.3 * shadow.sum()  # DIS sees the shadow move
    assert (supported & shadow).sum() < 0.3 * (plain & shadow).sum()
    assert (supported & square).sum() > 0.8 * (plain & square).sum()


def test_motion_segments_split_separate_regions_and_drop_specks():
    moving = np.zeros((16, 16), bool)
    moving[1:5, 1:5] = True  # object A
    moving[9:14, 8:15] = True  # object B, apart from A
    moving[0, 15] = True  # a speck
    ids = motion_segments(moving, min_area=4)
    assert ids[2, 2] != ids[10, 10] and min(ids[2, 2], ids[10, 10]) >= 1
    assert ids[0, 15] == 0 and set(np.unique(ids)) == {0, 1, 2}
    single = initial_targets(moving[None], single_id=True)[0]
    assert set(np.unique(single)) == {0, 1}


def test_explain_away_keeps_region_ids_and_adds_new_ones():
    regions = np.zeros((20, 20), np.uint8)
    regions[2:10, 2:18] = 1  # pusher + pushed object, touching
    regions[14:18, 14:18] = 2  # another moving object
    segments = np.zeros((20, 20), np.int32)
    segments[2:10, 2:8] = 5  # the model knows the pusher
    out = explain_away(segments, regions, purity=0.8)
    assert (out[2:10, 2:8] == 3).all() and (out[2:10, 8:18] == 1).all() and (out[14:18, 14:18] == 2).all()


def test_episode_background_keeps_off_every_object_that_moves_in_a_sim_episode():
    from perception_nodes.segmentation.train import pairs_from_episodes, sim_episodes

    tcfg = TrainConfig(out="unused", sim_episodes=2, sim_seed=1000)  # the training defaults
    cfg = EisenConfig.preset("small")
    pairs = pairs_from_episodes(sim_episodes(tcfg, cfg), cfg, tcfg)
    h, w = cfg.map_size
    inst = np.stack([cv2.resize(i, (w, h), interpolation=cv2.INTER_NEAREST) for i in pairs.instance])
    bg = pairs.background
    assert bg.shape == pairs.motion.shape and not (bg & pairs.motion).any()
    assert (inst[bg] == 0).mean() > 0.99  # background nodes are table / floor ...
    assert bg[inst == 0].mean() > 0.4  # ... and cover a good part of it
    no_floor = pairs_from_episodes(
        sim_episodes(tcfg, cfg), cfg, dataclasses.replace(tcfg, vacated_background=0)
    )
    assert (no_floor.background <= bg).all()  # the vacated floor only adds nodes (measured 0.73 -> 0.85)
    assert bg[inst == 0].mean() > no_floor.background[inst == 0].mean() + 0.05
    still = pairs.still  # objects that move later, labelled where they still stand
    assert not (still > 0)[bg | pairs.motion].any()
    good = total = 0
    for ids, truth in zip(still, inst, strict=True):
        for k in np.unique(ids[ids > 0]):
            values, counts = np.unique(truth[ids == k], return_counts=True)
            good += counts.max() if values[np.argmax(counts)] > 0 else 0
            total += counts.sum()
    assert total > 200 and good / total > 0.65, (good, total)  # mostly one object each (measured 0.73)


def test_depth_background_adds_the_table_around_objects():
    """With the episode's depth the supporting plane joins the background group: measured on 8 training
    episodes, the group covers 0.99 of the true table and floor (0.84 without) at precision 0.990."""
    pytest.importorskip("open3d")
    from perception_nodes.segmentation.train import pairs_from_episodes, sim_episodes

    tcfg = TrainConfig(out="unused", sim_episodes=2, sim_seed=1000)
    cfg = EisenConfig.preset("small")
    episodes = list(sim_episodes(tcfg, cfg))
    plain = pairs_from_episodes(episodes, cfg, tcfg)
    depth = pairs_from_episodes(episodes, cfg, dataclasses.replace(tcfg, depth_background=0.003))
    h, w = cfg.map_size
    table = np.stack([cv2.resize(i, (w, h), interpolation=cv2.INTER_NEAREST) for i in plain.instance]) == 0
    assert depth.background[table].mean() > 0.95 > plain.background[table].mean() + 0.05
    assert table[depth.background].mean() > 0.97
    assert (depth.motion == plain.motion).all() and (depth.still == plain.still).all()


def test_background_rows_are_averaged_apart_and_weighted():
    from perception_nodes.segmentation import affinity as aff
    from perception_nodes.segmentation.train import BACKGROUND_ID

    gen = torch.Generator().manual_seed(0)
    key, query = torch.randn(2, 8, 16, 16, generator=gen), torch.randn(2, 8, 16, 16, generator=gen)
    moving = torch.zeros(2, 16, 16, dtype=torch.long)
    moving[:, 4:9, 5:11] = 1
    with_bg = torch.where(moving > 0, moving, torch.full_like(moving, BACKGROUND_ID))
    with_bg[:, :2] = 0  # unknown rows
    layout = aff.make_layout(16, 16, 8, 5, aff.random_global_offsets(16, 16, 8, 4, gen))

    def loss(targets, bg=None, weight=0.0):
        return float(aff.affinity_kl_loss(key, query, targets, layout, bg, weight))

    only_moving = loss(moving)
    assert loss(with_bg, BACKGROUND_ID, 0.0) == pytest.approx(only_moving, rel=1e-5)
    background = loss(torch.where(moving > 0, 0, with_bg))  # background rows alone, official averaging
    assert background > 0.1
    assert loss(with_bg, BACKGROUND_ID, 0.5) == pytest.approx(only_moving + 0.5 * background, rel=1e-4)


def test_episode_still_labels_an_object_until_it_moves():
    """Object A (left) moves in pair 3, object B (right) in pair 1; frames are unchanged until then."""
    rng = np.random.default_rng(0)
    rgb = np.repeat(rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8), 6, axis=0)
    motion = [np.zeros((8, 8), bool) for _ in range(5)]
    motion[3][2:5, 1:3] = True  # A
    motion[1][2:5, 5:7] = True  # B
    still = episode_still(motion, rgb, [0, 1, 2, 3, 4], max_diff=4.0)
    assert set(np.unique(still[0])) == {0, 1, 2}  # before either moves: both, one id each
    assert (still[0][2:5, 1:3] > 0).all() and (still[0][2:5, 5:7] > 0).all()
    assert still[0][2, 1] != still[0][2, 5]
    assert (still[1][2:5, 1:3] > 0).all() and (still[1][2:5, 5:7] == 0).all()  # B moves now
    assert (still[2][2:5, 1:3] > 0).all()
    assert not still[3].any() and not still[4].any()  # A moves in 3; nothing moves after
    changed = rgb.copy()
    changed[3, 8:20, 4:12] = 255 - changed[3, 8:20, 4:12]  # A's pixels differ in the frame it moves
    assert not (episode_still(motion, changed, [0], max_diff=4.0)[0][2:5, 1:3]).any()
    arrival = [np.zeros((8, 8), bool) for _ in range(5)]
    arrival[1][5:8, 5:7] = True  # B came to a stop lower down in frame 2
    after = episode_still(motion, rgb, [0, 1, 2, 3, 4], max_diff=4.0, arrival=arrival)
    assert not after[1][5:8, 5:7].any()  # not yet there
    assert all((after[s][5:8, 5:7] > 0).all() for s in (2, 3, 4))  # there from frame 2 on
    assert (after[2][2:5, 1:3] > 0).all() and after[2][2, 1] != after[2][6, 5]  # A before it moves, apart


def test_episode_vacated_is_the_floor_an_object_passed_over():
    """A plain square on a textured floor goes A (frame 0) -> C (frame 1) -> B (frames 2, 3)."""
    rng = np.random.default_rng(0)
    floor = rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8)
    rgb = np.repeat(floor, 4, axis=0)
    places = {
        "A": (slice(4, 12), slice(4, 12)),
        "C": (slice(4, 12), slice(16, 24)),
        "B": (slice(20, 28), slice(16, 24)),
    }
    for t, name in enumerate("ACBB"):
        rgb[t][places[name]] = (200, 30, 30)
    node = {
        k: (slice(v[0].start // 4, v[0].stop // 4), slice(v[1].start // 4, v[1].stop // 4))
        for k, v in places.items()
    }
    (vac,) = episode_vacated(rgb, [2], (8, 8), max_diff=4.0)
    assert vac[node["C"]].all()  # where it passed: floor in frames 0, 2 and 3
    assert not vac[node["A"]].any() and not vac[node["B"]].any()  # where it was first or stays: unknown
    assert vac.sum() == 64 - 2 * 4  # everything else is floor in all three frames
    assert not episode_vacated(rgb, [1], (8, 8), max_diff=4.0)[0][node["C"]].any()  # the square is there then
    lit = rgb.copy()
    lit[2] = np.clip(lit[2].astype(int) + 10, 0, 255)  # the frame changes (light, camera): nothing
    assert not episode_vacated(lit, [2], (8, 8), max_diff=4.0)[0].any()


def test_still_objects_fill_only_unlabelled_nodes():
    from perception_nodes.segmentation.train import BACKGROUND_ID, STILL_OFFSET, sample_batch

    motion = np.zeros((1, 4, 4), bool)
    motion[0, 0] = True  # a region of 4 nodes (smaller ones are dropped)
    still = np.zeros((1, 4, 4), np.uint8)
    still[0, 0:2, 0:2] = 3
    background = np.zeros((1, 4, 4), bool)
    background[0, 3] = True
    pairs = PairData(
        np.zeros((1, 16, 16, 3), np.uint8), motion, np.zeros((1, 16, 16), np.uint16), background, still
    )
    targets = initial_targets(motion, False)
    rng = np.random.default_rng(1)
    for _ in range(4):  # either flip
        _, tg = sample_batch(pairs, targets, 1, rng, "cpu", background=True, still=True)
        tg = tg[0].numpy()
        tg = tg if tg[1, 0] > 0 else tg[:, ::-1]
        assert (tg[0] == 1).all() and (tg[1, :2] == STILL_OFFSET + 3).all() and (tg[1, 2:] == 0).all()
        assert (tg[3] == BACKGROUND_ID).all() and (tg[2] == 0).all()


def test_robot_mask_is_the_pusher_placed_from_its_own_pose():
    """The self mask comes from the pusher's pose and size (and the depth image for what stands in front),
    not from the image or the instance masks: it must still land on the pusher the renderer drew."""
    from perception_nodes.segmentation.train import robot_masks, sim_episodes

    tcfg = TrainConfig(out="unused", sim_episodes=2, sim_seed=1000)
    cfg = EisenConfig.preset("small")
    h, w = cfg.map_size
    inter = union = 0
    for ep in sim_episodes(tcfg, cfg):
        body = robot_masks(ep, cfg.input_size, cfg.map_size)
        truth = np.stack([cv2.resize(i, (w, h), interpolation=cv2.INTER_NEAREST) for i in ep.instance])
        truth = truth == ep.pusher_id
        assert body.shape == truth.shape and body.any()
        inter, union = inter + (body & truth).sum(), union + (body | truth).sum()
        ep.meta.pop("pusher_half_size")  # a bag written before the size was recorded
        assert robot_masks(ep, cfg.input_size, cfg.map_size) is None
    assert inter / union > 0.65, inter / union  # 0.78 on 8 training episodes, quantised to the 64² map


def test_self_mask_takes_the_pusher_out_of_the_motion_targets():
    from perception_nodes.segmentation.train import pairs_from_episodes, sim_episodes

    tcfg = TrainConfig(out="unused", sim_episodes=1, sim_seed=1001, self_mask=True)
    cfg = EisenConfig.preset("small")
    h, w = cfg.map_size
    episodes = list(sim_episodes(tcfg, cfg))
    plain = pairs_from_episodes(episodes, cfg, dataclasses.replace(tcfg, self_mask=False))
    pairs = pairs_from_episodes(episodes, cfg, tcfg)
    assert not plain.robot.any() and pairs.robot.any()
    ep = episodes[0]
    inst = np.stack([cv2.resize(i, (w, h), interpolation=cv2.INTER_NEAREST) for i in pairs.instance])
    pusher = inst == ep.pusher_id
    assert plain.motion[pusher].mean() > 0.5  # without it the pusher is in the motion targets ...
    assert pairs.motion[pusher].mean() < 0.05  # ... with it, out of them ...
    assert pairs.robot[pusher].mean() > 0.6 and pusher[pairs.robot].mean() > 0.6  # ... and a group of its own
    assert (pairs.motion <= plain.motion).all() and not (pairs.motion & pairs.robot).any()


def test_robot_nodes_take_the_robot_id_before_the_background_fills_in():
    from perception_nodes.segmentation.train import BACKGROUND_ID, ROBOT_ID, explain_robot, sample_batch

    motion = np.zeros((1, 6, 6), bool)
    motion[0, :, :3] = True  # pusher (column 0) pushing an object (columns 1-2)
    body = np.zeros((1, 6, 6), bool)
    body[0, :, 0] = True
    every, arrival = explain_robot(np.concatenate([body, body]), list(motion), list(motion))
    assert not every[0][:, :2].any() and every[0][:, 2].all()  # the body and its halo node leave the motion
    assert not arrival[0][:, :2].any()
    background = np.ones((1, 6, 6), bool)
    pairs = PairData(
        np.zeros((1, 24, 24, 3), np.uint8),
        np.stack(every),
        np.zeros((1, 24, 24), np.uint16),
        background,
        None,
        body,
    )
    targets = initial_targets(pairs.motion, False)
    _, tg = sample_batch(pairs, targets, 1, np.random.default_rng(0), "cpu", background=True)
    tg = tg[0].numpy()
    tg = tg if tg[0, 0] == ROBOT_ID else tg[:, ::-1]
    assert (tg[:, 0] == ROBOT_ID).all() and (tg[:, 2] == 1).all()
    assert (tg[:, 1] == BACKGROUND_ID).all() and (tg[:, 3:] == BACKGROUND_ID).all()
