from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ControllerParams(_message.Message):
    __slots__ = ("epsilon", "T", "s", "seed", "overflow_policy", "epoch_us", "stages")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    T_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OVERFLOW_POLICY_FIELD_NUMBER: _ClassVar[int]
    EPOCH_US_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    T: int
    s: float
    seed: int
    overflow_policy: str
    epoch_us: int
    stages: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, epsilon: _Optional[float] = ..., T: _Optional[int] = ..., s: _Optional[float] = ..., seed: _Optional[int] = ..., overflow_policy: _Optional[str] = ..., epoch_us: _Optional[int] = ..., stages: _Optional[_Iterable[int]] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("switch_name", "params")
    SWITCH_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    switch_name: str
    params: ControllerParams
    def __init__(self, switch_name: _Optional[str] = ..., params: _Optional[_Union[ControllerParams, _Mapping]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("switch_id", "acked_seq", "R")
    SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    R_FIELD_NUMBER: _ClassVar[int]
    switch_id: int
    acked_seq: int
    R: int
    def __init__(self, switch_id: _Optional[int] = ..., acked_seq: _Optional[int] = ..., R: _Optional[int] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ("switch_id", "group", "seq", "src", "dst", "sport", "dport", "proto")
    SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    SPORT_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    switch_id: int
    group: int
    seq: int
    src: int
    dst: int
    sport: int
    dport: int
    proto: int
    def __init__(self, switch_id: _Optional[int] = ..., group: _Optional[int] = ..., seq: _Optional[int] = ..., src: _Optional[int] = ..., dst: _Optional[int] = ..., sport: _Optional[int] = ..., dport: _Optional[int] = ..., proto: _Optional[int] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("l_g", "group", "seq")
    L_G_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    l_g: int
    group: int
    seq: int
    def __init__(self, l_g: _Optional[int] = ..., group: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class HelloBatch(_message.Message):
    __slots__ = ("hellos",)
    HELLOS_FIELD_NUMBER: _ClassVar[int]
    hellos: _containers.RepeatedCompositeFieldContainer[HelloRequest]
    def __init__(self, hellos: _Optional[_Iterable[_Union[HelloRequest, _Mapping]]] = ...) -> None: ...

class HelloAnswers(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[HelloReply]
    def __init__(self, answers: _Optional[_Iterable[_Union[HelloReply, _Mapping]]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("switch_id",)
    SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    switch_id: int
    def __init__(self, switch_id: _Optional[int] = ...) -> None: ...

class LgUpdate(_message.Message):
    __slots__ = ("group", "l_g", "snapshot", "snapshot_end")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    L_G_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_END_FIELD_NUMBER: _ClassVar[int]
    group: int
    l_g: int
    snapshot: bool
    snapshot_end: bool
    def __init__(self, group: _Optional[int] = ..., l_g: _Optional[int] = ..., snapshot: _Optional[bool] = ..., snapshot_end: _Optional[bool] = ...) -> None: ...

class ReportBatch(_message.Message):
    __slots__ = ("switch_id", "seq", "ts_ns", "src", "dst", "sport", "dport", "proto", "count", "epoch")
    SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    SPORT_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    switch_id: int
    seq: _containers.RepeatedScalarFieldContainer[int]
    ts_ns: _containers.RepeatedScalarFieldContainer[int]
    src: _containers.RepeatedScalarFieldContainer[int]
    dst: _containers.RepeatedScalarFieldContainer[int]
    sport: _containers.RepeatedScalarFieldContainer[int]
    dport: _containers.RepeatedScalarFieldContainer[int]
    proto: _containers.RepeatedScalarFieldContainer[int]
    count: _containers.RepeatedScalarFieldContainer[int]
    epoch: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, switch_id: _Optional[int] = ..., seq: _Optional[_Iterable[int]] = ..., ts_ns: _Optional[_Iterable[int]] = ..., src: _Optional[_Iterable[int]] = ..., dst: _Optional[_Iterable[int]] = ..., sport: _Optional[_Iterable[int]] = ..., dport: _Optional[_Iterable[int]] = ..., proto: _Optional[_Iterable[int]] = ..., count: _Optional[_Iterable[int]] = ..., epoch: _Optional[_Iterable[int]] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("switch_id", "acked_seq", "accepted", "duplicates")
    SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    switch_id: int
    acked_seq: int
    accepted: int
    duplicates: int
    def __init__(self, switch_id: _Optional[int] = ..., acked_seq: _Optional[int] = ..., accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("elephants", "epoch")
    ELEPHANTS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    elephants: bool
    epoch: int
    def __init__(self, elephants: _Optional[bool] = ..., epoch: _Optional[int] = ...) -> None: ...

class Elephant(_message.Message):
    __slots__ = ("src", "dst", "sport", "dport", "proto", "reports", "detected_ns", "epoch", "early")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    SPORT_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    DETECTED_NS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EARLY_FIELD_NUMBER: _ClassVar[int]
    src: int
    dst: int
    sport: int
    dport: int
    proto: int
    reports: int
    detected_ns: int
    epoch: int
    early: bool
    def __init__(self, src: _Optional[int] = ..., dst: _Optional[int] = ..., sport: _Optional[int] = ..., dport: _Optional[int] = ..., proto: _Optional[int] = ..., reports: _Optional[int] = ..., detected_ns: _Optional[int] = ..., epoch: _Optional[int] = ..., early: _Optional[bool] = ...) -> None: ...

class EpochSummary(_message.Message):
    __slots__ = ("epoch", "open", "reports", "untracked_reports", "late_reports", "flows", "elephants", "closed_ns")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    UNTRACKED_REPORTS_FIELD_NUMBER: _ClassVar[int]
    LATE_REPORTS_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    ELEPHANTS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_NS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    open: bool
    reports: int
    untracked_reports: int
    late_reports: int
    flows: int
    elephants: int
    closed_ns: int
    def __init__(self, epoch: _Optional[int] = ..., open: _Optional[bool] = ..., reports: _Optional[int] = ..., untracked_reports: _Optional[int] = ..., late_reports: _Optional[int] = ..., flows: _Optional[int] = ..., elephants: _Optional[int] = ..., closed_ns: _Optional[int] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FlushReply(_message.Message):
    __slots__ = ("closed",)
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    closed: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, closed: _Optional[_Iterable[int]] = ...) -> None: ...

class SwitchCounters(_message.Message):
    __slots__ = ("name", "switch_id", "registered", "subscribed", "hellos", "groups", "reports", "duplicates", "batches", "acked_seq", "pulls", "pull_messages", "pull_timeouts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    HELLOS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    PULLS_FIELD_NUMBER: _ClassVar[int]
    PULL_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PULL_TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    switch_id: int
    registered: bool
    subscribed: bool
    hellos: int
    groups: int
    reports: int
    duplicates: int
    batches: int
    acked_seq: int
    pulls: int
    pull_messages: int
    pull_timeouts: int
    def __init__(self, name: _Optional[str] = ..., switch_id: _Optional[int] = ..., registered: _Optional[bool] = ..., subscribed: _Optional[bool] = ..., hellos: _Optional[int] = ..., groups: _Optional[int] = ..., reports: _Optional[int] = ..., duplicates: _Optional[int] = ..., batches: _Optional[int] = ..., acked_seq: _Optional[int] = ..., pulls: _Optional[int] = ..., pull_messages: _Optional[int] = ..., pull_timeouts: _Optional[int] = ...) -> None: ...

class QueryReply(_message.Message):
    __slots__ = ("elephants", "switches", "counters", "params_json", "epochs")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ELEPHANTS_FIELD_NUMBER: _ClassVar[int]
    SWITCHES_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    elephants: _containers.RepeatedCompositeFieldContainer[Elephant]
    switches: _containers.RepeatedCompositeFieldContainer[SwitchCounters]
    counters: _containers.ScalarMap[str, int]
    params_json: str
    epochs: _containers.RepeatedCompositeFieldContainer[EpochSummary]
    def __init__(self, elephants: _Optional[_Iterable[_Union[Elephant, _Mapping]]] = ..., switches: _Optional[_Iterable[_Union[SwitchCounters, _Mapping]]] = ..., counters: _Optional[_Mapping[str, int]] = ..., params_json: _Optional[str] = ..., epochs: _Optional[_Iterable[_Union[EpochSummary, _Mapping]]] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("pull_id", "epoch", "part", "parts", "src", "dst", "sport", "dport", "proto")
    PULL_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    SPORT_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    pull_id: int
    epoch: int
    part: int
    parts: int
    src: _containers.RepeatedScalarFieldContainer[int]
    dst: _containers.RepeatedScalarFieldContainer[int]
    sport: _containers.RepeatedScalarFieldContainer[int]
    dport: _containers.RepeatedScalarFieldContainer[int]
    proto: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, pull_id: _Optional[int] = ..., epoch: _Optional[int] = ..., part: _Optional[int] = ..., parts: _Optional[int] = ..., src: _Optional[_Iterable[int]] = ..., dst: _Optional[_Iterable[int]] = ..., sport: _Optional[_Iterable[int]] = ..., dport: _Optional[_Iterable[int]] = ..., proto: _Optional[_Iterable[int]] = ...) -> None: ...

class PullAnswer(_message.Message):
    __slots__ = ("switch_id", "pull_id", "part", "totals")
    SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    PULL_ID_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    switch_id: int
    pull_id: int
    part: int
    totals: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, switch_id: _Optional[int] = ..., pull_id: _Optional[int] = ..., part: _Optional[int] = ..., totals: _Optional[_Iterable[int]] = ...) -> None: ...
