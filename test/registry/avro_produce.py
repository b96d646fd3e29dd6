"""Avro messages for infra-bridge's Avro test (TAP 049), produced with
confluent-kafka's AvroSerializer (Confluent's wire format, schemas registered
in the registry), and the rows PostgreSQL should end with, as SQL.

    avro_produce.py BOOTSTRAP REGISTRY_URL TOPIC SCENARIO N OUT_DIR

SCENARIO: plain (records onto columns: every Avro type and logical type,
two versions of the schema, messages that cannot be decoded), keyed (Avro
keys, updates and tombstones), debezium (Debezium's envelope as Kafka
Connect's Avro converter writes it: creates, reads, updates with the
unavailable-value placeholder, deletes, a primary-key change, a truncate).
Writes OUT_DIR/expected.sql (INSERT INTO expected ...), OUT_DIR/count (the
messages produced) and, for plain, OUT_DIR/bad (each undecodable message's
offset and hex).
"""
import datetime
import decimal
import json
import random
import struct
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

bootstrap, registry_url, topic, scenario, n, out = sys.argv[1:7]
n = int(n)
rng = random.Random(49)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def q(s):
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def lit(v, cast):
    return 'NULL' if v is None else q(v) + '::' + cast


def pick_text():
    return rng.choice(['plain', 'tab\there', 'new\nline', 'back\\slash', 'quote"d', "it's",
                       'comma,brace{}', 'NULL', '', 'ünïcödé ✓ 🐘', ' spaced '])


def ts_text(us, zone):
    t = EPOCH + datetime.timedelta(microseconds=us)
    s = t.strftime('%Y-%m-%d %H:%M:%S.%f')
    if t.year < 1000:
        s = '%04d' % t.year + s[s.index('-'):]
    return s + ('+00' if zone else '')


def time_text(us):
    return '%02d:%02d:%02d.%06d' % (us // 3600000000, us // 60000000 % 60, us // 1000000 % 60, us % 1000000)


def array_lit(items):
    if items is None:
        return 'NULL'
    return 'ARRAY[' + ','.join('NULL' if i is None else q(i) for i in items) + ']::text[]'


def f32(x):
    return struct.unpack('<f', struct.pack('<f', x))[0]


INNER = {'type': 'record', 'name': 'Inner', 'fields': [
    {'name': 'x', 'type': 'int'}, {'name': 'y', 'type': ['null', 'string']}]}
PLAIN_FIELDS = [
    {'name': 'id', 'type': 'int'},
    {'name': 'name', 'type': 'string'},
    {'name': 'price', 'type': {'type': 'bytes', 'logicalType': 'decimal', 'precision': 12, 'scale': 3}},
    {'name': 'ratio', 'type': {'type': 'fixed', 'name': 'Ratio', 'size': 8, 'logicalType': 'decimal',
                               'precision': 18, 'scale': 6}},
    {'name': 'born', 'type': {'type': 'int', 'logicalType': 'date'}},
    {'name': 'seen', 'type': {'type': 'long', 'logicalType': 'timestamp-micros'}},
    {'name': 'seen_ms', 'type': {'type': 'long', 'logicalType': 'timestamp-millis'}},
    {'name': 'loc', 'type': {'type': 'long', 'logicalType': 'local-timestamp-micros'}},
    {'name': 't_ms', 'type': {'type': 'int', 'logicalType': 'time-millis'}},
    {'name': 't_us', 'type': {'type': 'long', 'logicalType': 'time-micros'}},
    {'name': 'ref', 'type': {'type': 'string', 'logicalType': 'uuid'}},
    {'name': 'flag', 'type': 'boolean'},
    {'name': 'score', 'type': 'double'},
    {'name': 'small', 'type': 'float'},
    {'name': 'big', 'type': 'long'},
    {'name': 'blob', 'type': 'bytes'},
    {'name': 'tags', 'type': {'type': 'array', 'items': ['null', 'string']}},
    {'name': 'attrs', 'type': {'type': 'map', 'values': 'long'}},
    {'name': 'nested', 'type': ['null', INNER]},
    {'name': 'nested2', 'type': ['null', 'Inner']},
    {'name': 'mood', 'type': {'type': 'enum', 'name': 'Mood', 'symbols': ['SAD', 'OK', 'HAPPY']}},
    {'name': 'dur', 'type': {'type': 'fixed', 'name': 'Dur', 'size': 12, 'logicalType': 'duration'}},
]
PLAIN_V1 = {'type': 'record', 'name': 'Item', 'namespace': 'infra.test', 'fields': PLAIN_FIELDS}
# Version 2 adds a field with a default: its messages carry another id.
PLAIN_V2 = dict(PLAIN_V1, fields=PLAIN_FIELDS + [{'name': 'note', 'type': ['null', 'string'], 'default': None}])


def plain_row(i, v2):
    """An Avro record and the SQL row it stands for."""
    price = decimal.Decimal(rng.randint(-10 ** 11, 10 ** 11)).scaleb(-3)
    ratio = decimal.Decimal(rng.choice([0, 1, -1, rng.randint(-10 ** 17, 10 ** 17)])).scaleb(-6)
    born = rng.choice([0, -1, -719162, 2932896, rng.randint(-30000, 30000)])    # 0001-01-01, 9999-12-31
    seen = rng.choice([0, -1, 1709210096123456, rng.randint(-10 ** 16, 10 ** 16)])
    seen_ms = rng.randint(-10 ** 12, 10 ** 13)
    loc = rng.randint(-10 ** 15, 10 ** 16)
    t_ms = rng.choice([0, 86399999, rng.randint(0, 86399999)])
    t_us = rng.choice([0, 86399999999, rng.randint(0, 86399999999)])
    # one number that only an exponent writes: its batch goes through the staging table
    score = 1e-300 if i == 7 else rng.choice([0.0, -0.5, 123456.789, rng.uniform(-1e6, 1e6)])
    small = f32(rng.choice([0.0, 1.5, -3.25, rng.uniform(-1e4, 1e4)]))
    big = rng.choice([0, -2 ** 63, 2 ** 63 - 1, rng.randint(-2 ** 40, 2 ** 40)])
    blob = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 5, 40])))
    tags = [rng.choice([None, pick_text()]) for _ in range(rng.randint(0, 4))]
    attrs = {pick_text(): rng.randint(-5, 5) for _ in range(rng.randint(0, 3))}
    nested = rng.choice([None, {'x': i, 'y': rng.choice([None, pick_text()])}])
    nested2 = rng.choice([None, {'x': -i, 'y': 'again'}])
    mood = rng.choice(['SAD', 'OK', 'HAPPY'])
    months, days, ms = rng.randint(0, 30), rng.randint(0, 40), rng.randint(0, 10 ** 8)
    name = pick_text()
    ref = '%08x-0000-4000-8000-%012x' % (i, rng.randrange(16 ** 12))
    rec = {'id': i, 'name': name, 'price': price, 'ratio': ratio, 'born': born, 'seen': seen, 'seen_ms': seen_ms,
           'loc': loc, 't_ms': t_ms, 't_us': t_us, 'ref': ref, 'flag': i % 2 == 0, 'score': score, 'small': small,
           'big': big, 'blob': blob, 'tags': tags, 'attrs': attrs, 'nested': nested, 'nested2': nested2,
           'mood': mood, 'dur': struct.pack('<III', months, days, ms)}
    note = None
    if v2:
        note = rng.choice([None, pick_text()])
        rec['note'] = note
    born_text = (datetime.date(1970, 1, 1) + datetime.timedelta(days=born)).isoformat()
    born_text = '%04d' % int(born_text.split('-')[0]) + born_text[born_text.index('-'):]
    sql = '(' + ', '.join([
        str(i), q(name), q(str(price)), q(str(ratio)), q(born_text) + '::date',
        q(ts_text(seen, True)) + '::timestamptz', q(ts_text(seen_ms * 1000, True)) + '::timestamptz',
        q(ts_text(loc, False)) + '::timestamp', q(time_text(t_ms * 1000)) + '::time', q(time_text(t_us)) + '::time',
        q(ref) + '::uuid', 'true' if i % 2 == 0 else 'false', repr(score) + '::float8', '%.9g::real' % small,
        str(big), q('\\x' + blob.hex()) + '::bytea', array_lit(tags), q(json.dumps(attrs)) + '::jsonb',
        lit(None if nested is None else json.dumps(nested), 'jsonb'),
        lit(None if nested2 is None else json.dumps(nested2), 'jsonb'), q(mood),
        q('%d months %d days %d.%03d seconds' % (months, days, ms // 1000, ms % 1000)) + '::interval',
        lit(note, 'text')]) + ')'
    return rec, sql


def serializer(client, schema, conf=None):
    return AvroSerializer(client, json.dumps(schema), conf=conf or {'auto.register.schemas': True})


def produce_all(msgs):
    """msgs: (key bytes or None, value bytes or None); in order, one partition."""
    p = Producer({'bootstrap.servers': bootstrap, 'enable.idempotence': True})
    for k, v in msgs:
        p.produce(topic, key=k, value=v)
    p.flush(60)
    with open(out + '/count', 'w') as f:
        f.write('%d\n' % len(msgs))


def plain(client):
    ctx = SerializationContext(topic, MessageField.VALUE)
    s1, s2 = serializer(client, PLAIN_V1), serializer(client, PLAIN_V2)
    msgs, rows, bad = [], [], []
    for i in range(1, n + 1):
        v2 = i > n // 2
        rec, sql = plain_row(i, v2)
        msgs.append((None, (s2 if v2 else s1)(rec, ctx)))
        rows.append(sql)
        if i == n // 3:
            good = msgs[-1][1]
            for b in [b'{"id": 1}',                                   # not the wire format
                      b'\x00\x7f\xff\xff\xf0' + good[5:],             # a schema id the registry lacks
                      good[:5] + good[5:12]]:                        # the Avro binary cut short
                bad.append((len(msgs), b.hex()))
                msgs.append((None, b))
    produce_all(msgs)
    with open(out + '/expected.sql', 'w') as f:
        f.write('INSERT INTO expected VALUES\n' + ',\n'.join(rows) + ';\n')
    with open(out + '/bad', 'w') as f:
        f.writelines('%d %s\n' % b for b in bad)


KEY = {'type': 'record', 'name': 'Key', 'namespace': 'infra.test', 'fields': [{'name': 'id', 'type': 'int'}]}
KEYED = {'type': 'record', 'name': 'Keyed', 'namespace': 'infra.test', 'fields': [
    {'name': 'id', 'type': 'int'}, {'name': 'n', 'type': 'long'}, {'name': 'label', 'type': ['null', 'string']}]}


def keyed(client):
    ks, vs = serializer(client, KEY), serializer(client, KEYED)
    kctx, vctx = SerializationContext(topic, MessageField.KEY), SerializationContext(topic, MessageField.VALUE)
    state, msgs = {}, []
    for step in range(n):
        i = rng.randint(1, max(2, n // 5))
        if rng.random() < 0.2:
            state.pop(i, None)
            msgs.append((ks({'id': i}, kctx), None))        # a tombstone deletes
        else:
            rec = {'id': i, 'n': step, 'label': rng.choice([None, pick_text()])}
            state[i] = rec
            msgs.append((ks({'id': i}, kctx), vs(rec, vctx)))
    produce_all(msgs)
    with open(out + '/expected.sql', 'w') as f:
        if state:
            f.write('INSERT INTO expected VALUES\n' + ',\n'.join(
                '(%d, %d, %s)' % (r['id'], r['n'], lit(r['label'], 'text')) for r in state.values()) + ';\n')


def optional(t):
    return ['null', t]


DBZ_VALUE = {'type': 'record', 'name': 'Value', 'namespace': 'src.public.items', 'fields': [
    {'name': 'id', 'type': {'type': 'int', 'connect.default': 0}},
    {'name': 'name', 'type': optional('string'), 'default': None},
    {'name': 'price', 'type': optional({'type': 'bytes', 'scale': 2, 'precision': 10, 'connect.version': 1,
                                        'connect.parameters': {'scale': '2', 'connect.decimal.precision': '10'},
                                        'connect.name': 'org.apache.kafka.connect.data.Decimal',
                                        'logicalType': 'decimal'}), 'default': None},
    {'name': 'born', 'type': optional({'type': 'int', 'connect.version': 1, 'connect.name': 'io.debezium.time.Date'}),
     'default': None},
    {'name': 'seen', 'type': optional({'type': 'long', 'connect.version': 1,
                                       'connect.name': 'io.debezium.time.MicroTimestamp'}), 'default': None},
    {'name': 'at_tz', 'type': optional({'type': 'string', 'connect.version': 1,
                                        'connect.name': 'io.debezium.time.ZonedTimestamp'}), 'default': None},
    {'name': 'ref', 'type': optional({'type': 'string', 'connect.version': 1,
                                      'connect.name': 'io.debezium.data.Uuid'}), 'default': None},
    {'name': 'doc', 'type': optional({'type': 'string', 'connect.version': 1,
                                      'connect.name': 'io.debezium.data.Json'}), 'default': None},
    {'name': 'tags', 'type': optional({'type': 'array', 'items': optional('string')}), 'default': None},
    {'name': 'blob', 'type': optional('bytes'), 'default': None},
    {'name': 'big', 'type': optional('string'), 'default': None},
], 'connect.name': 'src.public.items.Value'}
DBZ_ENVELOPE = {'type': 'record', 'name': 'Envelope', 'namespace': 'src.public.items', 'fields': [
    {'name': 'before', 'type': optional(DBZ_VALUE), 'default': None},
    {'name': 'after', 'type': optional('Value'), 'default': None},
    {'name': 'source', 'type': {'type': 'record', 'name': 'Source', 'namespace': 'io.debezium.connector.postgresql',
                                'fields': [{'name': 'version', 'type': 'string'},
                                           {'name': 'connector', 'type': 'string'},
                                           {'name': 'ts_ms', 'type': 'long'},
                                           {'name': 'table', 'type': 'string'}],
                                'connect.name': 'io.debezium.connector.postgresql.Source'}},
    {'name': 'op', 'type': 'string'},
    {'name': 'ts_ms', 'type': optional('long'), 'default': None},
], 'connect.name': 'src.public.items.Envelope'}
DBZ_KEY = {'type': 'record', 'name': 'Key', 'namespace': 'src.public.items',
           'fields': [{'name': 'id', 'type': 'int'}], 'connect.name': 'src.public.items.Key'}
PLACEHOLDER = '__debezium_unavailable_value'


def dbz_row(i):
    return {'id': i, 'name': pick_text(), 'price': decimal.Decimal(rng.randint(-10 ** 9, 10 ** 9)).scaleb(-2),
            'born': rng.randint(-40000, 30000), 'seen': rng.randint(-10 ** 15, 10 ** 16),
            'at_tz': '2024-02-29T12:34:56.%06dZ' % rng.randrange(10 ** 6),
            'ref': '%08x-0000-4000-8000-%012x' % (i, rng.randrange(16 ** 12)),
            'doc': json.dumps({'i': i, 'l': [1, 'two', None]}),
            'tags': [rng.choice([None, pick_text()]) for _ in range(rng.randint(0, 3))],
            'blob': rng.choice([None, bytes(rng.randrange(256) for _ in range(rng.randint(0, 20)))]),
            'big': 'big%d' % i * rng.randint(1, 300)}


def dbz_sql(r):
    born = (datetime.date(1970, 1, 1) + datetime.timedelta(days=r['born'])).isoformat()
    return '(' + ', '.join([
        str(r['id']), q(r['name']), q(str(r['price'])), q(born) + '::date', q(ts_text(r['seen'], False)) + '::timestamp',
        q(r['at_tz']) + '::timestamptz', q(r['ref']) + '::uuid', q(r['doc']) + '::jsonb', array_lit(r['tags']),
        lit(None if r['blob'] is None else '\\x' + r['blob'].hex(), 'bytea'), lit(r['big'], 'text')]) + ')'


def debezium(client):
    ks, vs = serializer(client, DBZ_KEY), serializer(client, DBZ_ENVELOPE)
    kctx, vctx = SerializationContext(topic, MessageField.KEY), SerializationContext(topic, MessageField.VALUE)
    source = {'version': '3.6.1.Final', 'connector': 'postgresql', 'ts_ms': 1709210096000, 'table': 'items'}
    state, msgs = {}, []

    def event(op, key, before, after):
        msgs.append((None if key is None else ks({'id': key}, kctx),
                     vs({'before': before, 'after': after, 'source': source, 'op': op, 'ts_ms': 1709210096000},
                        vctx)))

    for i in range(1, n // 4 + 1):            # the snapshot
        state[i] = dbz_row(i)
        event('r', i, None, state[i])
    for step in range(n):
        i = rng.randint(1, n // 2)
        roll = rng.random()
        if step == n // 2:
            state.clear()
            event('t', None, None, None)        # a truncate has no key
        elif i not in state or roll < 0.3:
            state[i] = dbz_row(i)
            event('c', i, None, state[i])
        elif roll < 0.5:
            state[i] = dbz_row(i)
            event('u', i, None, state[i])
        elif roll < 0.6:
            new = dbz_row(i)
            sent = dict(new, big=PLACEHOLDER)      # big unchanged and TOASTed: the placeholder
            new['big'] = state[i]['big']
            state[i] = new
            event('u', i, None, sent)
        elif roll < 0.7:
            j = i + n                             # the key changes: a delete and a create
            old = state.pop(i)
            event('d', i, old, None)
            msgs.append((ks({'id': i}, kctx), None))
            state[j] = dict(old, id=j)
            event('c', j, None, state[j])
        else:
            old = state.pop(i)
            event('d', i, old, None)
            msgs.append((ks({'id': i}, kctx), None))
    produce_all(msgs)
    with open(out + '/expected.sql', 'w') as f:
        if state:
            f.write('INSERT INTO expected VALUES\n' + ',\n'.join(dbz_sql(r) for r in state.values()) + ';\n')


def fuzz(client):
    """Valid plain messages with bytes flipped, cut, repeated or added after
    the schema id: whatever they decode to, the bridge must survive them."""
    ctx = SerializationContext(topic, MessageField.VALUE)
    s1 = serializer(client, PLAIN_V1)
    msgs = []
    for i in range(1, n + 1):
        rec, _ = plain_row(i, False)
        b = bytearray(s1(rec, ctx))
        how = rng.randrange(5)
        if how == 0:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(5, len(b))] = rng.randrange(256)
        elif how == 1:
            b = b[:rng.randrange(5, len(b))]
        elif how == 2:
            at = rng.randrange(5, len(b))
            b[at:at] = bytes([rng.choice([0x7f, 0xff, 0x80, 0x01])]) * rng.randint(1, 12)
        elif how == 3:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 30)))
        else:
            b = b[:5] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        msgs.append((None, bytes(b)))
    produce_all(msgs)


client = SchemaRegistryClient({'url': registry_url})
{'plain': plain, 'keyed': keyed, 'debezium': debezium, 'fuzz': fuzz}[scenario](client)
