// htsgetr viewer: igv.js over this server's own htsget endpoints (see htsgetr/viewer).
// Everything about the data is asked through htsget with the user's token, so the page
// shows only what a ticket would give the same caller.
"use strict";

const cfg = JSON.parse(document.getElementById("viewer-config").textContent);
const base = location.origin + cfg.root;
const statusLine = document.getElementById("viewer-status");
const MiB = 1 << 20;

function say(text, error) {
  statusLine.textContent = text;
  statusLine.className = error ? "error" : "";
}

function tokenFromFragment() {
  // #token=... stays in the browser: fragments are never sent to a server
  const params = new URLSearchParams(location.hash.slice(1));
  return params.get("token") || "";
}

function authHeaders(token) {
  return token ? {Authorization: "Bearer " + token} : {};
}

function idPath() {
  return cfg.id.split("/").map(encodeURIComponent).join("/");
}

async function headerTicket(endpoint, format, token) {
  const url = `${base}/${endpoint}/${idPath()}?class=header&format=${format}`;
  const resp = await fetch(url, {headers: authHeaders(token)});
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = body.htsget || {};
    return {status: resp.status, error: err.error || "Error", message: err.message || ""};
  }
  return {status: resp.status, ticket: body};
}

async function ticketBytes(ticket) {
  const parts = [];
  for (const block of ticket.htsget.urls) {
    if (block.url.startsWith("data:")) {
      const b64 = block.url.slice(block.url.indexOf(",") + 1);
      parts.push(Uint8Array.from(atob(b64), c => c.charCodeAt(0)));
    } else {
      const resp = await fetch(block.url, {headers: block.headers || {}});
      if (!resp.ok) throw new Error(`data block: HTTP ${resp.status}`);
      parts.push(new Uint8Array(await resp.arrayBuffer()));
    }
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

async function inflateBgzf(bytes) {
  // BGZF: gzip members with BSIZE in the BC extra field; each inflated on its own
  const pieces = [];
  let p = 0;
  while (p + 18 <= bytes.length) {
    const bsize = (bytes[p + 16] | (bytes[p + 17] << 8)) + 1;
    const cdata = bytes.subarray(p + 18, p + bsize - 8);
    const stream = new Blob([cdata]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
    pieces.push(new Uint8Array(await new Response(stream).arrayBuffer()));
    p += bsize;
  }
  const out = new Uint8Array(pieces.reduce((n, x) => n + x.length, 0));
  let at = 0;
  for (const x of pieces) { out.set(x, at); at += x.length; }
  return out;
}

function bamReferences(raw) {
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (String.fromCharCode(...raw.subarray(0, 4)) !== "BAM\x01") throw new Error("not BAM");
  let p = 8 + view.getInt32(4, true);
  const n = view.getInt32(p, true);
  p += 4;
  const refs = [];
  const text = new TextDecoder();
  for (let i = 0; i < n; i++) {
    const lName = view.getInt32(p, true);
    const name = text.decode(raw.subarray(p + 4, p + 4 + lName - 1));
    refs.push([name, view.getInt32(p + 4 + lName, true)]);
    p += 8 + lName;
  }
  return refs;
}

function vcfReferences(raw) {
  const refs = [];
  for (const line of new TextDecoder().decode(raw).split("\n")) {
    if (!line.startsWith("##contig=<")) continue;
    const id = /[<,]ID=([^,>]+)/.exec(line);
    const len = /[<,]length=(\d+)/.exec(line);
    if (id && len) refs.push([id[1], Number(len[1])]);
  }
  return refs;
}

function allNReference(refs) {
  // an indexed FASTA of Ns, one line per sequence, made of slices of one 1 MiB Blob: igv
  // reads it by ranges, so a 3 Gbp genome costs no more memory than a small one
  const n = new Blob(["N".repeat(MiB)]);
  const parts = [];
  const fai = [];
  let offset = 0;
  for (const [name, length] of refs) {
    const head = `>${name}\n`;
    parts.push(head);
    offset += new TextEncoder().encode(head).length;
    fai.push(`${name}\t${length}\t${offset}\t${length}\t${length + 1}`);
    for (let left = length; left > 0; left -= MiB) parts.push(left >= MiB ? n : n.slice(0, left));
    parts.push("\n");
    offset += length + 1;
  }
  return {fasta: new File(parts, "reference.fa"), fai: new File([fai.join("\n") + "\n"],
    "reference.fa.fai")};
}

async function choose(token) {
  // the formats this ID has, as the caller may see them
  const bam = await headerTicket("reads", "BAM", token);
  if (bam.ticket) return {kind: "alignment", format: "bam", endpoint: "reads", found: bam};
  const vcf = await headerTicket("variants", "VCF", token);
  if (vcf.ticket) return {kind: "variant", format: "vcf", endpoint: "variants", found: vcf};
  for (const refusal of [bam, vcf]) {
    if (refusal.status === 401 || refusal.status === 403) {
      throw new Error(`${refusal.error}: ${refusal.message} (give a token)`);
    }
  }
  const cram = await headerTicket("reads", "CRAM", token);
  const bcf = await headerTicket("variants", "BCF", token);
  if (cram.ticket || bcf.ticket) {
    throw new Error(`${cfg.id} is ${cram.ticket ? "CRAM" : "BCF"}: igv.js's htsget reader ` +
      "takes BAM and VCF only (a client limit); fetch it with htsgetr fetch, samtools or " +
      "bcftools");
  }
  throw new Error(`${bam.error}: ${bam.message}`);
}

async function show(token, locus) {
  say(`Looking up ${cfg.id}…`);
  const choice = await choose(token);
  const raw = await inflateBgzf(await ticketBytes(choice.found.ticket));
  const refs = choice.format === "bam" ? bamReferences(raw) : vcfReferences(raw);
  if (!refs.length) throw new Error("the header names no references with lengths");
  const reference = allNReference(refs);
  const start = locus || `${refs[0][0]}:1-${Math.min(refs[0][1], 10000)}`;
  if (window.igvBrowser) igv.removeBrowser(window.igvBrowser);
  const browser = await igv.createBrowser(document.getElementById("igv"), {
    reference: {id: cfg.id, name: cfg.id, fastaURL: reference.fasta, indexURL: reference.fai},
    loadDefaultGenomes: false,
    locus: start,
    tracks: [{type: choice.kind, format: choice.format, sourceType: "htsget", name: cfg.id,
              url: `${base}/${choice.endpoint}/${idPath()}`, headers: authHeaders(token)}],
  });
  window.igvBrowser = browser;
  say(`${cfg.id}: ${choice.format.toUpperCase()} over htsget`);
  window.igvResult = {track: choice.kind, format: choice.format, references: refs.length};
}

function start() {
  document.getElementById("viewer-id").textContent = cfg.id;
  document.getElementById("viewer-igv-version").textContent = cfg.igvVersion;
  const locusBox = document.getElementById("viewer-locus");
  const tokenBox = document.getElementById("viewer-token");
  locusBox.value = cfg.locus || "";
  tokenBox.value = tokenFromFragment();
  const run = () => show(tokenBox.value.trim(), locusBox.value.trim()).catch(e => {
    say(String(e.message || e), true);
    window.igvError = String(e.message || e);
  });
  document.getElementById("viewer-form").addEventListener("submit", ev => {
    ev.preventDefault();
    if (window.igvBrowser && locusBox.value.trim()) {
      window.igvBrowser.search(locusBox.value.trim());
    } else {
      run();
    }
  });
  run();
}

start();
