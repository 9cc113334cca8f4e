// `epwa serve` against the official openai npm client, over loopback.
//
//   node tests/serve/openai_client_test.mjs EPWA_BINARY MODEL_DIR
//
// Starts a real server (port 0, API key, the operator's epw2-et watermark, the default scheme), talks
// to it with the client a platform's users have, and checks what the OpenAI
// API promises plus epwa's policy: seeded answers repeat, a stream equals the
// same answer unstreamed, concurrent answers equal the same requests served
// alone, every completion carries the operator's watermark and is detected by
// the detect endpoint, and refusals come back as the client's error classes.
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';

const [epwa, model] = process.argv.slice(2);
if (!epwa || !model) {
  console.error('usage: openai_client_test.mjs EPWA_BINARY MODEL_DIR');
  process.exit(2);
}
const work = mkdtempSync(join(tmpdir(), 'epwa-serve-'));
const keyFile = join(work, 'wm.key');
execFileSync(epwa, ['keygen', '--out', keyFile]);
const apiKey = 'test-key-0123456789';
writeFileSync(join(work, 'api_keys'), `# test keys\n${apiKey}\n`);

const server = spawn(epwa, ['serve', '-m', model, '--port', '0', '--parallel', '4', '--ctx', '512',
  '--watermark', 'epw2-et', '--key-file', keyFile, '--api-key-file', join(work, 'api_keys'), '--quiet',
  '--no-cache'], { stdio: ['ignore', 'ignore', 'pipe'] });
let log = '';
const port = await new Promise((resolve, reject) => {
  server.stderr.on('data', (d) => {
    log += d.toString();
    const m = log.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
    if (m) resolve(Number(m[1]));
  });
  server.on('exit', (code) => reject(new Error(`server exited (${code}) before listening:\n${log}`)));
  setTimeout(() => reject(new Error(`server did not start in 60 s:\n${log}`)), 60000);
});
const baseURL = `http://127.0.0.1:${port}/v1`;
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120000 });

let failures = 0;
async function test(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${e.stack || e}`);
  }
}

const messages = [
  { role: 'system', content: 'You answer briefly.' },
  { role: 'user', content: 'Tell me about the history of the Debian project.' },
];

async function post(path, body, key = apiKey) {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${key}` },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

let routerHash = '';
await test('models list names the model and its router hash', async () => {
  const list = await client.models.list();
  assert.equal(list.data.length, 1);
  routerHash = list.data[0].meta.router_hash;
  assert.match(routerHash, /^[0-9a-f]{64}$/);
  assert.equal(list.data[0].meta.watermark, 'epw2-et');
});

let reference;
await test('chat completion: seeded, watermarked, usage', async () => {
  const req = { model: 'tiny', messages, max_tokens: 40, temperature: 0.8, seed: 7 };
  const a = await client.chat.completions.create(req);
  const b = await client.chat.completions.create(req);
  assert.equal(a.object, 'chat.completion');
  assert.equal(a.choices[0].message.role, 'assistant');
  assert.ok(a.choices[0].message.content.length > 0);
  assert.ok(['stop', 'length'].includes(a.choices[0].finish_reason));
  assert.equal(a.choices[0].message.content, b.choices[0].message.content, 'the same seed gives the same text');
  assert.ok(a.usage.prompt_tokens > 10 && a.usage.completion_tokens > 0);
  assert.equal(a.usage.total_tokens, a.usage.prompt_tokens + a.usage.completion_tokens);
  assert.equal(a.epwa.watermark.scheme, 'epw2-et');
  assert.equal(a.epwa.watermark.version, 'EPW-A v2');
  assert.equal(a.epwa.watermark.router_hash, routerHash);
  reference = a;
});

await test('a stream carries the same text as the unstreamed answer', async () => {
  const stream = await client.chat.completions.create({
    model: 'tiny', messages, max_tokens: 40, temperature: 0.8, seed: 7, stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta?.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.ok(chunks > 3, `only ${chunks} chunks`);
  assert.equal(text, reference.choices[0].message.content);
  assert.equal(finish, reference.choices[0].finish_reason);
  assert.deepEqual(usage, reference.usage);
});

await test('chat logprobs: ids, bytes and top lists', async () => {
  const r = await client.chat.completions.create({
    model: 'tiny', messages, max_tokens: 12, seed: 3, logprobs: true, top_logprobs: 5,
  });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, r.usage.completion_tokens);
  for (const t of content) {
    assert.equal(t.top_logprobs.length, 5);
    assert.ok(Number.isInteger(t.id));
    assert.ok(t.logprob <= 0);
    for (let i = 1; i < 5; i++) assert.ok(t.top_logprobs[i - 1].logprob >= t.top_logprobs[i].logprob);
  }
});

await test('legacy completions with logprobs and a stop sequence', async () => {
  const r = await client.completions.create({ model: 'tiny', prompt: 'The', max_tokens: 30, seed: 5, logprobs: 2 });
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, r.usage.completion_tokens);
  assert.equal(lp.token_logprobs.length, lp.tokens.length);
  const text = r.choices[0].text;
  if (text.length > 4) {
    // Stopping at a piece of the unstopped answer cuts it right there.
    const stop = text.slice(2, 4);
    const s = await client.completions.create({ model: 'tiny', prompt: 'The', max_tokens: 30, seed: 5, stop: [stop] });
    assert.equal(s.choices[0].text, text.slice(0, text.indexOf(stop)));
    assert.equal(s.choices[0].finish_reason, 'stop');
  }
});

await test("a chat turn ends at the template's end-of-turn token; logit_bias reaches the sampler", async () => {
  const tok = await post('/tokenize', { content: '<|im_end|>' });
  assert.equal(tok.status, 200);
  assert.equal(tok.body.tokens.length, 1);
  const imEnd = tok.body.tokens[0];
  // Forced by the bias, the first token is <|im_end|>: it ends the turn (the
  // model's EOS is <|endoftext|>) and its text is not part of the answer.
  const chat = await client.chat.completions.create({ model: 'm', messages, max_tokens: 8, seed: 1,
    logit_bias: { [imEnd]: 100 } });
  assert.equal(chat.choices[0].finish_reason, 'stop');
  assert.equal(chat.choices[0].message.content, '');
  assert.equal(chat.usage.completion_tokens, 1);
  // A plain completion has no turns: the same bias runs to max_tokens.
  const plain = await client.completions.create({ model: 'm', prompt: 'The', max_tokens: 3, seed: 1,
    logit_bias: { [imEnd]: 100 } });
  assert.equal(plain.choices[0].finish_reason, 'length');
  assert.equal(plain.usage.completion_tokens, 3);
  // -100 bans a token: the seeded answer's first token never comes back.
  const free = await client.completions.create({ model: 'm', prompt: 'The', max_tokens: 1, seed: 1,
    temperature: 0 });
  const first = (await post('/tokenize', { content: free.choices[0].text })).body.tokens[0];
  const banned = await client.completions.create({ model: 'm', prompt: 'The', max_tokens: 1, seed: 1,
    temperature: 0, logit_bias: { [first]: -100 } });
  assert.notEqual(banned.choices[0].text, free.choices[0].text);
  await assert.rejects(client.completions.create({ model: 'm', prompt: 'The', max_tokens: 1,
    logit_bias: { 99999999: 1 } }), (e) => e.status === 400 && /vocabulary/.test(e.message));
});

await test('8 concurrent requests equal the same requests served alone', async () => {
  const reqs = Array.from({ length: 8 }, (_, i) => ({
    model: 'tiny', messages: [{ role: 'user', content: `Question number ${i}: what is a ${['port', 'package', 'kernel', 'shell'][i % 4]}?` }],
    max_tokens: 24, temperature: 0.9, seed: 100 + i,
  }));
  const together = await Promise.all(reqs.map((r) => client.chat.completions.create(r)));
  const alone = [];
  for (const r of reqs) alone.push(await client.chat.completions.create(r));
  let same = 0;
  for (let i = 0; i < 8; i++) same += together[i].choices[0].message.content === alone[i].choices[0].message.content;
  console.log(`     ${same}/8 concurrent answers identical to the same request alone`);
  assert.equal(same, 8);
});

await test('served text is detected by the detect endpoint; human text is not', async () => {
  // The key is new on every run, and with it the watermarked text: some keys
  // steer the seeded answer into an early end of turn, too short to score.
  // Banning the end-of-turn and end-of-text tokens makes every run 200 tokens
  // long, so the test checks detection and not the length of one sample.
  const ends = {};
  for (const special of ['<|im_end|>', '<|endoftext|>']) {
    const t = await post('/tokenize', { content: special });
    assert.equal(t.body.tokens.length, 1);
    ends[t.body.tokens[0]] = -100;
  }
  const r = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 200, temperature: 1.0, seed: 11,
    logit_bias: ends });
  assert.equal(r.usage.completion_tokens, 200);
  const text = r.choices[0].message.content;
  const d = await post('/v1/watermark/detect', { text, messages });
  assert.equal(d.status, 200, JSON.stringify(d.body));
  console.log(`     watermarked: ${d.body.num_tokens_scored} scored, z = ${d.body.z_score.toFixed(2)}`);
  assert.equal(d.body.prediction, true);
  assert.equal(d.body.router_hash, routerHash);
  const human = 'Debian is an operating system and a distribution of Free Software. It is maintained and updated ' +
    'through the work of many users who volunteer their time and effort. The project was founded in 1993 and ' +
    'has grown into one of the largest collaborative software projects, with thousands of packages.';
  const h = await post('/v1/watermark/detect', { text: human });
  assert.equal(h.status, 200, JSON.stringify(h.body));
  assert.equal(h.body.prediction, false);
});

await test('concurrent detections equal the same detections alone, in fewer passes', async () => {
  const words = ['harbour', 'compiler', 'meadow', 'lantern', 'archive', 'violin'];
  const reqs = Array.from({ length: 12 }, (_, i) => ({
    text: `Paragraph ${i} about the ${words[i % 6]}: ` + `the ${words[(i + 1) % 6]} and the ${words[(i + 2) % 6]} `.repeat(3 + i),
    ...(i % 3 === 1 ? { scheme: 'gsg' } : {}),
    ...(i % 4 === 2 ? { method: 'cspv', sample: 8, min_tokens: 4, seed: i } : {}),
  }));
  const counters = async () => {
    const r = await fetch(`http://127.0.0.1:${port}/metrics`, { headers: { Authorization: `Bearer ${apiKey}` } });
    const text = await r.text();
    const read = (name) => Number((text.match(new RegExp(`^${name} (\\d+)`, 'm')) || [])[1]);
    return { detections: read('epwa_detections_total'), passes: read('epwa_detection_batches_total') };
  };
  const before = await counters();
  const together = await Promise.all(reqs.map((r) => post('/v1/watermark/detect', r)));
  const middle = await counters();
  const alone = [];
  for (const r of reqs) alone.push(await post('/v1/watermark/detect', r));
  for (let i = 0; i < reqs.length; i++) {
    assert.equal(together[i].status, 200, JSON.stringify(together[i].body));
    assert.deepEqual(together[i].body, alone[i].body, `request ${i}`);
  }
  const detections = middle.detections - before.detections, passes = middle.passes - before.passes;
  console.log(`     ${detections} concurrent detections ran in ${passes} passes`);
  assert.equal(detections, reqs.length);
  assert.ok(passes >= 2 && passes <= reqs.length, `${passes} passes`);  // two schemes at least
});

await test('refusals arrive as the client error classes', async () => {
  const bad = new OpenAI({ baseURL, apiKey: 'wrong-key-000000', maxRetries: 0 });
  await assert.rejects(bad.chat.completions.create({ model: 'tiny', messages }), (e) => e.status === 401);
  await assert.rejects(client.chat.completions.create({ model: 'tiny', messages, max_tokens: 0 }),
    (e) => e.status === 400 && /max_tokens/.test(e.message));
  await assert.rejects(client.chat.completions.create({ model: 'tiny', messages, watermark: false }),
    (e) => e.status === 403);
  await assert.rejects(client.chat.completions.create({ model: 'tiny', messages, n: 2 }), (e) => e.status === 400);
  const health = await fetch(`http://127.0.0.1:${port}/health`);
  assert.equal(health.status, 200, 'health needs no key');
});

const exited = new Promise((resolve) => server.on('exit', (code, signal) => resolve({ code, signal })));
server.kill('SIGTERM');
const { code } = await exited;
await test('SIGTERM stops the server cleanly', async () => assert.equal(code, 0, log));
rmSync(work, { recursive: true, force: true });
console.log(failures ? `${failures} FAILED` : 'all passed');
process.exit(failures ? 1 : 0);
