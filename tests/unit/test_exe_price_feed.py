"""Executive price holding: the planogram's prices reach the bus process once per change."""

from __future__ import annotations

from vmc.planogram import Planogram
from vmc.services import bus_messages as msg
from vmc.services.price_feed import PriceFeed


def _planogram(price: int) -> Planogram:
    return Planogram.from_mapping(
        {
            "version": price,
            "products": [{"id": "water"}],
            "selections": [
                {
                    "number": 3,
                    "product": "water",
                    "price": price,
                    "capacity": 8,
                    "par_level": 6,
                    "alarm_level": 2,
                }
            ],
        }
    )


class Bus:
    def __init__(self) -> None:
        self.up = True
        self.sent: list[msg.BusCommand] = []

    def send(self, command: msg.BusCommand) -> bool:
        if self.up:
            self.sent.append(command)
        return self.up


def test_prices_go_to_each_new_bus_process_and_on_each_change() -> None:
    bus = Bus()
    planogram: Planogram | None = None
    feed = PriceFeed(lambda: planogram, bus.send)
    feed.tick()
    assert bus.sent == []  # no bus process said it is ready yet
    feed.ready()
    assert bus.sent == [msg.SetPrices(())]
    planogram = _planogram(100)
    feed.tick()
    feed.tick()
    assert bus.sent[1:] == [msg.SetPrices(((3, 100),))]
    planogram = _planogram(120)
    bus.up = False  # the bus process died: nothing more is tried until the next one is ready
    feed.tick()
    feed.tick()
    bus.up = True
    feed.tick()
    assert len(bus.sent) == 2
    feed.ready()
    assert bus.sent[2:] == [msg.SetPrices(((3, 120),))]
