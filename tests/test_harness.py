"""Node harness on a live (asynchronous) bus: off-thread processing, newest frame wins, survival, params."""

import dataclasses
import threading
import time

import numpy as np
import pytest

from perception_nodes.nodes.base import NodeBase
from perception_nodes.runtime.loopback import LoopbackNetwork
from perception_nodes.runtime.params import apply_values, parameter_table

TOPIC = "/in"


@dataclasses.dataclass(frozen=True)
class SlowConfig:
    delay_s: float = dataclasses.field(default=0.05, metadata={"help": "processing time per message"})
    fail_on: tuple[int, ...] = dataclasses.field(default=(), metadata={"help": "sequence numbers that raise"})

    def __post_init__(self):
        if self.delay_s < 0:
            raise ValueError("delay_s must be >= 0")


class SlowNode(NodeBase):
    Config = SlowConfig
    diagnostics_period_s = 0.05

    def setup(self):
        self.seen: list[int] = []
        self.threads: set[str] = set()
        self.done = threading.Event()
        self.trigger(TOPIC, "std_msgs/msg/UInt32", self.on_msg)

    def on_msg(self, msg):
        self.threads.add(threading.current_thread().name)
        time.sleep(self.config.delay_s)
        if msg.data in self.config.fail_on:
            raise RuntimeError(f"bad message {msg.data}")
        self.seen.append(msg.data)
        if msg.data == 99:
            self.done.set()


def _publish_burst(net, values):
    pub = net.bus("source").publisher(TOPIC, "std_msgs/msg/UInt32")
    for v in values:
        pub.publish(net.store.types["std_msgs/msg/UInt32"](data=v))


def test_newest_frame_wins_off_the_callback_thread():
    net = LoopbackNetwork()
    node = SlowNode(net.bus("slow"))
    try:
        _publish_burst(net, [*range(20), 99])  # published far faster than 50 ms per message
        assert node.done.wait(5.0)
        time.sleep(0.1)
        assert node.seen[-1] == 99 and node.seen == sorted(node.seen)
        assert len(node.seen) < 5  # stale messages were replaced, not queued
        assert node.stats.dropped == 21 - len(node.seen)
        assert threading.current_thread().name not in node.threads and node.threads == {"slow-worker"}
    finally:
        node.shutdown()
        net.shutdown()


def test_survives_a_failing_message_and_reports_it(caplog):
    net = LoopbackNetwork()
    node = SlowNode(net.bus("slow", {"delay_s": 0.0, "fail_on": [3]}))
    diags = []
    net.bus("listener").subscribe("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", diags.append)
    try:
        pub = net.bus("source").publisher(TOPIC, "std_msgs/msg/UInt32")
        for v in [1, 2, 3, 4, 99]:
            pub.publish(net.store.types["std_msgs/msg/UInt32"](data=v))
            time.sleep(0.02)  # let each one be processed
        assert node.done.wait(5.0)
        assert 3 not in node.seen and 99 in node.seen and 4 in node.seen
        assert node.stats.errors == 1 and "bad message 3" in node.stats.last_error
        assert any("error processing /in" in r.getMessage() for r in caplog.records)
        time.sleep(0.15)
        values = {kv.key: kv.value for kv in diags[-1].status[0].values}
        assert values["errors"] == "1" and float(values["latency_ms_p50"]) >= 0
    finally:
        node.shutdown()
        net.shutdown()


def test_parameters_come_from_the_dataclass_and_validate():
    table = parameter_table(SlowConfig())
    assert table == {
        "delay_s": (0.05, "processing time per message"),
        "fail_on": ("[]", "sequence numbers that raise"),
    }
    cfg = apply_values(SlowConfig(), {"delay_s": 1, "fail_on": "[1, 2]"})
    assert cfg == SlowConfig(delay_s=1.0, fail_on=(1, 2))
    with pytest.raises(ValueError, match="delay_s must be >= 0"):
        apply_values(SlowConfig(), {"delay_s": -1.0})
    with pytest.raises(ValueError, match="no parameter 'speed'"):
        apply_values(SlowConfig(), {"speed": 1.0})


def test_nested_config_parameters():
    @dataclasses.dataclass(frozen=True)
    class Outer:
        inner: SlowConfig = dataclasses.field(default_factory=SlowConfig)
        size: tuple[int, int] = (256, 256)

    table = parameter_table(Outer())
    assert table["inner.delay_s"][0] == 0.05 and table["size"][0] == [256, 256]
    cfg = apply_values(Outer(), {"inner.delay_s": 0.5, "size": [128, 96]})
    assert cfg.inner.delay_s == 0.5 and cfg.size == (128, 96)
    assert np.isclose(Outer().inner.delay_s, 0.05)
