"""``herd testbed``: commands for a network p4run brought up (registered by herd.cli).

    herd testbed configure --topology topology.json [--seed N] [--p P]

writes what the evaluation network's switches need before traffic
(``herd.testbed.configure``) into every switch of the p4run network, through each switch's
Thrift port as the topology database records it.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from herd.errors import HerdInputError


def cmd_configure(args: argparse.Namespace) -> int:
    from herd.params import Params
    from herd.services.drivers.bmv2_thrift import Bmv2Thrift
    from herd.testbed.configure import apply_writes, evaluation_writes
    from herd.testbed.p4run import load
    from herd.testbed.topology import AGGREGATOR, LOAD_BALANCER

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
        try:
            client = Bmv2Thrift(sw.thrift_port)  # the program as the switch runs it
        except ConnectionError as e:
            raise HerdInputError(f"{name}: {e} (is the p4run network of {net.path} up?)") \
                from None
        try:
            apply_writes(client, plan[name])
        finally:
            client.close()
        print(f"{name} ({t.nodes[name].kind}, thrift {sw.thrift_port}): "
              + "; ".join(str(w) for w in plan[name]))
    return 0


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
    c.set_defaults(func=cmd_configure)
