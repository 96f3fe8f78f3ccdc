"""``herd testbed``: commands for a network p4run brought up (registered by herd.cli).

    herd testbed configure --topology topology.json [--seed N] [--p P] [--epoch-origin-in S]

writes what the evaluation network's switches need before traffic
(``herd.testbed.configure``) into every switch of the p4run network, through each switch's
Thrift port as the topology database records it.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from herd.errors import HerdInputError

T = TypeVar("T")


def cmd_configure(args: argparse.Namespace) -> int:
    from herd.params import Params
    from herd.services.drivers.bmv2_thrift import Bmv2Thrift
    from herd.testbed.configure import apply_writes, evaluation_writes
    from herd.testbed.p4run import load
    from herd.testbed.topology import AGGREGATOR, LOAD_BALANCER

    if args.epoch_origin_in is not None and not 0 <= args.epoch_origin_in <= 3600:
        raise HerdInputError(f"--epoch-origin-in {args.epoch_origin_in}: must be in "
                             "[0, 3600] seconds")
    # thrift logs a refused connection itself; the error below says it in one line
    logging.getLogger("thrift.transport.TSocket").setLevel(logging.CRITICAL)
    net = load(args.topology)
    net.check_evaluation()
    t = net.topology
    params = Params(k=len(t.ingress_switches), p=args.p, seed=args.seed)
    plan = evaluation_writes(t, params, net.cpu_ports())
    order = [*t.of_kind(LOAD_BALANCER), *t.ingress_switches, *t.of_kind(AGGREGATOR)]
    for name in [n.name for n in order if n.name in plan]:
        sw = net.switches[name]
        client = _reach(net, name, lambda port=sw.thrift_port: Bmv2Thrift(port))
        try:
            apply_writes(client, plan[name])
        finally:
            client.close()
        print(f"{name} ({t.nodes[name].kind}, thrift {sw.thrift_port}): "
              + "; ".join(str(w) for w in plan[name]))
    if args.epoch_origin_in is not None:
        set_common_epoch_origin(net, args.epoch_origin_in)
    return 0


def _reach(net: Any, name: str, connect: Callable[[], T]) -> T:
    """``connect()`` to switch ``name`` of the p4run network, or one line saying so."""
    try:
        return connect()
    except ConnectionError as e:
        raise HerdInputError(f"{name}: {e} (is the p4run network of {net.path} up?)") from None


def set_common_epoch_origin(net: Any, seconds: float) -> None:
    """Epoch 0 of every ingress switch begins at one wall-clock instant, ``seconds`` from
    now: each switch's own clock starts when p4run started it, so without this each would
    count epochs from its own start."""
    import datetime
    import time

    from herd.services.drivers.bmv2 import Bmv2Driver

    origin_us = time.time_ns() // 1000 + round(seconds * 1e6)
    for node in net.topology.ingress_switches:
        address = f"127.0.0.1:{net.switches[node.name].thrift_port}"
        driver = _reach(net, node.name, lambda n=node.name, a=address: Bmv2Driver(n, a))
        try:
            driver.set_epoch_origin(origin_us)
        finally:
            driver.close()
    at = datetime.datetime.fromtimestamp(origin_us / 1e6, datetime.UTC)
    print(f"epoch 0 of s1..s{len(net.topology.ingress_switches)} begins at "
          f"{at:%H:%M:%S.%f} UTC ({origin_us} us since the Unix epoch)")


def register_cli(sub: Any) -> None:
    from herd.cli import OneLineErrors

    tb = sub.add_parser("testbed", help="the evaluation network p4run brought up")
    tsub = tb.add_subparsers(dest="testbed_command", required=True, parser_class=OneLineErrors)
    c = tsub.add_parser("configure", help="write the load balancer's registers and port map, "
                        "the aggregator's port, the ingress switches' forwarding and CPU "
                        "mirroring, through each switch's Thrift port")
    c.add_argument("--topology", required=True,
                   help="p4run's topology database (topology.json where p4run ran)")
    c.add_argument("--seed", type=int, default=1,
                   help="run seed: the load balancer's PRNG seed comes from it (default 1; "
                   "give the controllers and herd simulate the same)")
    c.add_argument("--p", type=float, default=0.95,
                   help="probability a packet takes its flow's primary ingress switch "
                   "(default 0.95)")
    c.add_argument("--epoch-origin-in", type=float, metavar="SECONDS",
                   help="with epochs (the controllers' --epoch-us): epoch 0 of every ingress "
                   "switch begins this many seconds from now, the same instant for all "
                   "(default: each switch counts from its own start)")
    c.set_defaults(func=cmd_configure)
