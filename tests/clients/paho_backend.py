"""A backend service written with paho-mqtt (Python), for fan-out sessions: it
connects once, subscribes to a filter and prints every message; commands on stdin
make it publish. Prints one line per event for the test to read:
CONNECTED <reason> <session_present>, SUBSCRIBED <codes>, MSG <topic> <payload>,
PUBLISHED <mid>, DISCONNECTED <reason>.

stdin: `PUB <qos> <topic> <payload>` publishes; `QUIT` disconnects and exits.

usage: paho_backend.py HOST PORT CLIENT_ID FILTER QOS {3.1.1|5} [once]
(once: do not reconnect after a disconnect)
"""
import sys

import paho.mqtt.client as mqtt


def main():
    host, port, client_id, filt, qos, version = sys.argv[1:7]
    reconnect = sys.argv[7:8] != ["once"]
    if version == "5":
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=reconnect,
        )
    else:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
            reconnect_on_failure=reconnect,
        )
    client.max_inflight_messages_set(100)

    def on_connect(c, userdata, flags, reason_code, properties):
        print(f"CONNECTED {reason_code} {int(flags.session_present)}", flush=True)
        if not reason_code.is_failure:
            c.subscribe(filt, qos=int(qos))

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        codes = ",".join(str(int(getattr(r, "value", r))) for r in reason_codes)
        print(f"SUBSCRIBED {codes}", flush=True)

    def on_message(c, userdata, msg):
        print(f"MSG {msg.topic} {msg.payload.decode(errors='replace')}", flush=True)

    def on_publish(c, userdata, mid, reason_code, properties):
        print(f"PUBLISHED {mid}", flush=True)

    def on_disconnect(c, userdata, flags, reason_code, properties):
        print(f"DISCONNECTED {reason_code}", flush=True)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    client.connect(host, int(port), keepalive=30)
    client.loop_start()
    for line in sys.stdin:
        parts = line.strip().split(" ", 3)
        if parts[0] == "PUB" and len(parts) == 4:
            client.publish(parts[2], parts[3], qos=int(parts[1]))
        elif parts[0] == "QUIT":
            break
    client.disconnect()
    client.loop_stop()
    print("EXITED", flush=True)


if __name__ == "__main__":
    main()
