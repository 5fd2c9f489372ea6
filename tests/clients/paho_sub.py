"""A subscriber written as a typical paho-mqtt (Python) application: subscribe in
on_connect, loop_forever() with paho's default reconnect. Prints one line per event
for the test to read: CONNECTED <reason>, MSG <topic> <payload>, DISCONNECTED <reason>.

usage: paho_sub.py HOST PORT CLIENT_ID TOPIC {3.1.1|5}
"""
import sys

import paho.mqtt.client as mqtt


def main():
    host, port, client_id, topic, version = sys.argv[1:6]
    protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
    )

    def on_connect(c, userdata, flags, reason_code, properties):
        print(f"CONNECTED {reason_code}", flush=True)
        if not reason_code.is_failure:
            c.subscribe(topic)

    def on_message(c, userdata, msg):
        print(f"MSG {msg.topic} {msg.payload.decode(errors='replace')}", flush=True)

    def on_disconnect(c, userdata, flags, reason_code, properties):
        print(f"DISCONNECTED {reason_code}", flush=True)

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    client.connect(host, int(port), keepalive=30)
    client.loop_forever()
    print("EXITED", flush=True)


if __name__ == "__main__":
    main()
