// Preloaded into Azurite by local/azurite.py (node --require): a Table query whose filter is
// "PartitionKey eq '<p>' and ..." (no `or` outside parentheses) reads that partition through the
// PartitionKey index Azurite already keeps, instead of testing every entity of the table.
//
// Why: Azurite 3.35 answers every query with chain().where(filter) over the whole table
// (LokiTableMetadataStore.queryTableEntities), so one machine's partition read costs in proportion to
// the whole fleet's rows. The Table service reads a partition through its key index (the design guide's
// point and range queries), so at 10,000 machines the stand-in, not the product, was what grew. The
// answers do not change: the same filter, continuation and sort run over the partition's entities,
// which are the only ones a top-level "PartitionKey eq" conjunct can match.
//
// Point operations too: Azurite finds the entity of a get, insert, update, merge or delete with
// findOne({PartitionKey, RowKey}), which LokiJS answers by taking the partition through its index and
// then testing the RowKey of every entity in it (5,864 rows in one deployment run's partition at
// 10,000 machines); a blob's put finds the blob by account, container, name and snapshot, and LokiJS
// takes every blob of the account through the first and tests the rest (30,000 run logs at 10,000
// machines). The storage services find one entity or blob by its key without touching the others;
// here the smallest of the key fields' index ranges (Azurite keeps a binary index on each) is tested
// instead, with LokiJS's own range search and comparison.

"use strict";

const path = require("path");

const STORE_MODULE = path.join(
  path.dirname(require.resolve("azurite/package.json", { paths: [process.cwd(), path.join(__dirname, "..")] })),
  "dist", "src", "table", "persistence", "LokiTableMetadataStore.js",
);

// The LokiJS Azurite loads (its own dependency, resolved from Azurite's folder).
const LOKI_MODULE = require.resolve("lokijs", { paths: [path.dirname(STORE_MODULE)] });

// The partition a filter's first conjunct pins, or undefined when the filter may match other partitions:
// it must begin with PartitionKey eq '<value>' followed by its end or "and", and have no "or" outside
// parentheses (OData's and binds tighter, so a top-level or would let other partitions through).
function pinnedPartition(filter) {
  if (typeof filter !== "string") return undefined;
  const head = /^\s*PartitionKey\s+eq\s+'((?:[^']|'')*)'(?=\s*$|\s+and\s)/.exec(filter);
  if (head === null) return undefined;
  let depth = 0;
  let quoted = false;
  for (let i = 0; i < filter.length; i++) {
    const c = filter[i];
    if (c === "'") quoted = !quoted; // an escaped '' toggles twice
    else if (quoted) continue;
    else if (c === "(") depth++;
    else if (c === ")") depth--;
    else if (depth === 0 && (i === 0 || /[\s)]/.test(filter[i - 1])) && /^or(?!\w)/i.test(filter.slice(i, i + 3))) {
      return undefined;
    }
  }
  return head[1].replace(/''/g, "'");
}

function installPartitionQueries() {
  const Store = require(STORE_MODULE).default;
  const query = Store.prototype.queryTableEntities;
  Store.prototype.queryTableEntities = function (context, account, table, queryOptions, ...rest) {
    const partition = pinnedPartition(queryOptions && queryOptions.filter);
    if (partition === undefined) return query.call(this, context, account, table, queryOptions, ...rest);
    let entities;
    try {
      entities = this.getEntityCollection(account, table, context);
    } catch (error) {
      return query.call(this, context, account, table, queryOptions, ...rest); // its own error
    }
    // The original starts its chain synchronously, before its first await: the next chain() of this
    // collection, and only that one, starts from the partition's index.
    const chain = entities.chain;
    entities.chain = function (...args) {
      entities.chain = chain;
      return chain.apply(entities, args).find({ PartitionKey: partition });
    };
    try {
      return query.call(this, context, account, table, queryOptions, ...rest);
    } finally {
      entities.chain = chain;
    }
  };
}

// The lookups by a document's whole key that Azurite makes with findOne: a table entity's, and a
// blob's (LokiBlobMetadataStore.createBlob and the other blob operations; its blobs collection indexes
// each of these fields, and LokiJS takes the account's blobs, all of them, through the first).
const KEY_SHAPES = [
  ["PartitionKey", "RowKey"],
  ["accountName", "containerName", "name", "snapshot"],
];

// The document a findOne by one of KEY_SHAPES means, found in the smallest of its fields' index ranges;
// undefined when the query or the collection is not of that shape (LokiJS then answers it). Equal to
// LokiJS's answer: LokiJS takes the first field's range by the same calculateRange and tests the others
// with ===; every field is tested here with ===, and for strings (every value of these queries is one)
// calculateRange's equal range holds exactly the documents whose field === the value.
function documentByKey(collection, query) {
  if (query === null || typeof query !== "object" || collection.cloneObjects) return undefined;
  const fields = Object.keys(query);
  if (!KEY_SHAPES.some((shape) => shape.length === fields.length && shape.every((f, i) => f === fields[i]))) {
    return undefined;
  }
  if (!fields.every((f) => typeof query[f] === "string" && collection.binaryIndices[f])) return undefined;
  if (collection.data.length === 0) return null;
  let best;
  for (const field of fields) {
    if (collection.adaptiveBinaryIndices !== true) collection.ensureIndex(field); // as find() does
    const [from, to] = collection.calculateRange("$eq", field, query[field]);
    if (best === undefined || to - from < best.to - best.from) best = { field, from, to };
  }
  const positions = collection.binaryIndices[best.field].values;
  let found = null;
  for (let i = best.from; i <= best.to; i++) {
    const doc = collection.data[positions[i]];
    if (fields.every((f) => doc[f] === query[f])) {
      if (found !== null) return undefined; // two documents with the same keys: LokiJS's order decides
      found = doc;
    }
  }
  return found;
}

function installPointOperations() {
  const Collection = require(LOKI_MODULE).Collection;
  const findOne = Collection.prototype.findOne;
  Collection.prototype.findOne = function (query) {
    const found = documentByKey(this, query);
    return found === undefined ? findOne.call(this, query) : found;
  };
}

module.exports = { pinnedPartition, documentByKey, LOKI_MODULE };

// AZURITE_PARTITION_INDEX=off leaves Azurite as it ships (to measure what the index changes).
if (process.env.AZURITE_PARTITION_INDEX !== "off") {
  installPartitionQueries();
  installPointOperations();
}
