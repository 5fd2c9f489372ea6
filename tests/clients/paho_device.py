"""A constrained device written with paho-mqtt (Python): it subscribes ONCE, on its
first connection, and from then on trusts its persistent session (MQTT 3.1.1 clean
session 0, or MQTT 5 with a session expiry interval); paho reconnects it on its own.
Prints one line per event for the test to read: CONNECTED <reason> <session_present>,
SUBSCRIBED, MSG <topic> <payload>, DISCONNECTED <reason>.

usage: paho_device.py HOST PORT CLIENT_ID TOPIC {3.1.1|5}
"""
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main():
    host, port, client_id, topic, version = sys.argv[1:6]
    if version == "5":
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        connect_args = {"clean_start": False, "properties": props}
    else:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        connect_args = {}
    state = {"subscribed": False}

    def on_connect(c, userdata, flags, reason_code, properties):
        print(f"CONNECTED {reason_code} {int(flags.session_present)}", flush=True)
        if not reason_code.is_failure and not state["subscribed"]:
            state["subscribed"] = True
            c.subscribe(topic, qos=1)

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        print("SUBSCRIBED", flush=True)

    def on_message(c, userdata, msg):
        print(f"MSG {msg.topic} {msg.payload.decode(errors='replace')}", flush=True)

    def on_disconnect(c, userdata, flags, reason_code, properties):
        print(f"DISCONNECTED {reason_code}", flush=True)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    client.connect(host, int(port), keepalive=30, **connect_args)
    client.loop_forever(retry_first_connection=True)
    print("EXITED", flush=True)


if __name__ == "__main__":
    main()
