"""The rclpy backend of the Bus: a thin adapter over one ``rclpy.node.Node``.

rclpy is imported lazily (inside functions), so importing perception_nodes never needs ROS. Node entry
points use ``spin``::

    def main(args=None):
        from perception_nodes.runtime.rclpy_bus import spin
        spin(IdentityNode, args)
"""

from __future__ import annotations

import array
import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from perception_nodes.runtime.bus import Bus, Publisher, QoS

# rosidl basic type name -> array.array typecode used by rosidl_generator_py for numeric sequences
_TYPECODES = {
    "float": "f",
    "double": "d",
    "int8": "b",
    "uint8": "B",
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
}
# rosidl basic type name -> numpy dtype used by rosidl_generator_py for numeric fixed-size arrays
_DTYPES = {
    "float": np.float32,
    "double": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
}
_FLOATS = {"float", "double", "long double"}

# Field kinds. rosidl_generator_py checks field types only when ROS_PYTHON_CHECK_FIELDS=1, and its C
# converters then read e.g. an int given for a float64/byte/bool field as garbage, so make() converts
# every value to the exact Python type rclpy expects.
_NUM_SEQ, _NUM_ARRAY, _FLOAT, _OCTET, _BOOL, _OCTET_SEQ, _BOOL_SEQ, _OTHER = range(8)


@functools.cache
def message_class(typename: str) -> type:
    """The rclpy message class for ``pkg/msg/Type`` (``pkg/Type`` is accepted too)."""
    from rosidl_runtime_py.utilities import get_message

    try:
        return get_message(typename)
    except (AttributeError, ModuleNotFoundError, ValueError) as exc:
        raise TypeError(f"unknown message type {typename!r}: {exc}") from exc


@functools.cache
def _spec(typename: str) -> dict[str, tuple[int, Any, int | None]]:
    """``{field: (kind, typecode | dtype | None, fixed size | None)}`` from the class's SLOT_TYPES."""
    from rosidl_parser.definition import AbstractNestedType, Array, BasicType

    cls = message_class(typename)
    spec: dict[str, tuple[int, Any, int | None]] = {}
    for name, slot in zip(cls.get_fields_and_field_types(), cls.SLOT_TYPES, strict=True):
        size = slot.size if isinstance(slot, Array) else None
        if isinstance(slot, AbstractNestedType) and isinstance(slot.value_type, BasicType):
            basic = slot.value_type.typename
            if basic in _TYPECODES and size is None:
                spec[name] = (_NUM_SEQ, _TYPECODES[basic], None)
            elif basic in _DTYPES:
                spec[name] = (_NUM_ARRAY, np.dtype(_DTYPES[basic]), size)
            elif basic == "octet":
                spec[name] = (_OCTET_SEQ, None, size)
            elif basic == "boolean":
                spec[name] = (_BOOL_SEQ, None, size)
            else:
                spec[name] = (_OTHER, None, size)
        elif isinstance(slot, BasicType):
            kind = {"octet": _OCTET, "boolean": _BOOL}.get(slot.typename, _OTHER)
            spec[name] = (_FLOAT if slot.typename in _FLOATS else kind, None, None)
        else:
            spec[name] = (_OTHER, None, size)
    return spec


def _numeric(value: Any, dtype: np.dtype) -> np.ndarray:
    """``value`` as a flat, contiguous, native-order array of ``dtype``; refuses float -> integer."""
    arr = np.asarray(value)
    if dtype.kind in "iu" and arr.dtype.kind not in "biu":
        raise TypeError(f"cannot store {arr.dtype} values in an integer ({dtype}) field")
    return np.ascontiguousarray(arr, dtype=dtype).reshape(-1)


def _to_field(name: str, kind: int, code: Any, size: int | None, value: Any) -> Any:
    """Convert one value to the type the rclpy setter and C converter expect (no per-element loop
    for numeric arrays: numpy -> ``array.array`` via one buffer copy)."""
    if kind == _NUM_SEQ:
        if isinstance(value, array.array) and value.typecode == code:
            return value
        out = array.array(code)
        out.frombytes(memoryview(_numeric(value, np.dtype(code))).cast("B"))
        return out
    if kind in (_NUM_ARRAY, _OCTET_SEQ, _BOOL_SEQ):
        if kind == _NUM_ARRAY:
            out = _numeric(value, code)
        elif kind == _OCTET_SEQ:
            raw = bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None
            if raw is None and not all(isinstance(v, bytes) for v in value):
                raw = _numeric(value, np.dtype(np.uint8)).tobytes()
            out = [raw[i : i + 1] for i in range(len(raw))] if raw is not None else list(value)
        else:
            out = [bool(v) for v in np.asarray(value).reshape(-1)]
        if size is not None and len(out) != size:
            raise ValueError(f"field {name!r} needs exactly {size} values, got {len(out)}")
        return out
    if isinstance(value, np.generic):
        value = value.item()
    if kind == _FLOAT and isinstance(value, int):
        return float(value)
    if kind == _OCTET and isinstance(value, int):
        return bytes((value,))
    if kind == _BOOL and isinstance(value, int):
        return bool(value)
    if isinstance(value, np.ndarray):  # e.g. a string sequence given as numpy
        return value.tolist()
    return value


class _RclpyPublisher(Publisher):
    def __init__(self, pub: Any, topic: str, typename: str, context: Any = None):
        self._pub = pub
        self._context = context
        self.topic = topic
        self.typename = typename

    def publish(self, msg: Any) -> None:
        if self._context is not None and not self._context.ok():
            return  # shutting down (Ctrl-C): a result finished after shutdown has nowhere to go
        self._pub.publish(msg)


class _RosLogHandler(logging.Handler):
    """Forwards ``logging`` records to an rclpy (rcutils) logger, keeping %-formatting and tracebacks."""

    def __init__(self, ros_logger: Any):
        super().__init__(logging.DEBUG)
        self._ros = ros_logger
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.CRITICAL:
                self._ros.fatal(text)
            elif record.levelno >= logging.ERROR:
                self._ros.error(text)
            elif record.levelno >= logging.WARNING:
                self._ros.warning(text)
            elif record.levelno >= logging.INFO:
                self._ros.info(text)
            else:
                self._ros.debug(text)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def ros_logger_adapter(ros_logger: Any, name: str) -> logging.Logger:
    """A ``logging.Logger`` (not registered globally) whose records go to ``ros_logger``.

    rcutils severities use the same numbers as ``logging`` (DEBUG 10 ... FATAL 50), so the node's ROS
    log level (``--ros-args --log-level``) becomes the logger's level.
    """
    logger = logging.Logger(name)
    level = int(ros_logger.get_effective_level())
    logger.setLevel(level if level > 0 else logging.INFO)
    logger.addHandler(_RosLogHandler(ros_logger))
    logger.propagate = False
    return logger


def qos_profile(qos: QoS) -> Any:
    """The rclpy QoS profile for one of the stack's QoS classes."""
    from rclpy.qos import (
        DurabilityPolicy,
        HistoryPolicy,
        QoSProfile,
        ReliabilityPolicy,
        qos_profile_sensor_data,
    )

    if qos is QoS.SENSOR:
        return qos_profile_sensor_data
    if qos is QoS.RESULT:
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
    if qos is QoS.LATCHED:
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
    raise ValueError(f"unknown QoS class {qos!r}")


def _plain(value: Any) -> Any:
    """Parameter values as plain Python (rclpy returns array.array for numeric array parameters)."""
    return value.tolist() if isinstance(value, array.array) else value


class RclpyBus(Bus):
    """Bus over an rclpy Node; callbacks run on the node's executor threads."""

    synchronous = False

    def __init__(self, node: Any):
        self.node = node
        super().__init__(
            node.get_name(), ros_logger_adapter(node.get_logger(), f"perception_nodes.{node.get_name()}")
        )

    def publisher(self, topic: str, typename: str, qos: QoS = QoS.RESULT) -> Publisher:
        pub = self.node.create_publisher(message_class(typename), topic, qos_profile(qos))
        return _RclpyPublisher(pub, topic, typename, self.node.context)

    def subscribe(
        self,
        topic: str,
        typename: str,
        callback: Callable[[Any], None],
        qos: QoS = QoS.SENSOR,
        optional: bool = False,  # only replays use it; a live input is simply waited for
    ) -> None:
        self.node.create_subscription(message_class(typename), topic, callback, qos_profile(qos))

    def timer(self, period_s: float, callback: Callable[[], None]) -> Any:
        return self.node.create_timer(period_s, callback)

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def make(self, typename: str, **fields: Any) -> Any:
        """An rclpy message; numpy arrays become ``array.array`` (sequences) or typed numpy (fixed arrays)."""
        cls = message_class(typename)
        spec = _spec(typename)
        unknown = sorted(set(fields) - set(spec))
        if unknown:
            raise TypeError(f"{typename} has no field(s) {unknown}")
        msg = cls()
        for name, value in fields.items():
            setattr(msg, name, _to_field(name, *spec[name], value))
        return msg

    def get_parameter_overrides(self, names: dict[str, tuple[Any, str]]) -> dict[str, Any]:
        from rcl_interfaces.msg import ParameterDescriptor

        values: dict[str, Any] = {}
        for name, (default, description) in names.items():
            param = self.node.declare_parameter(name, default, ParameterDescriptor(description=description))
            values[name] = _plain(param.value)
        return values

    def shutdown(self) -> None:
        self.node.destroy_node()


def spin(node_factory: Callable[[Bus], Any], args: list[str] | None = None, name: str | None = None) -> None:
    """Run one perception node as a ROS 2 process until Ctrl-C / shutdown.

    ``node_factory(bus)`` builds the node object (a ``NodeBase`` subclass); the ROS node name defaults to
    its ``name`` attribute and can be remapped with ``--ros-args -r __node:=...``. Callbacks run on a
    ``MultiThreadedExecutor``; on exit the node object is shut down before the ROS node is destroyed.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    rclpy.init(args=args)
    node = rclpy.create_node(name or getattr(node_factory, "name", "perception_node"))
    bus = RclpyBus(node)
    obj = None
    executor = MultiThreadedExecutor()
    try:
        obj = node_factory(bus)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if obj is not None and hasattr(obj, "shutdown"):
            obj.shutdown()
        executor.shutdown()
        bus.shutdown()
        rclpy.try_shutdown()
