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

"use strict";

const path = require("path");

const STORE_MODULE = path.join(
  path.dirname(require.resolve("azurite/package.json", { paths: [process.cwd(), path.join(__dirname, "..")] })),
  "dist", "src", "table", "persistence", "LokiTableMetadataStore.js",
);

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

function install() {
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

module.exports = { pinnedPartition, install };

// AZURITE_PARTITION_INDEX=off leaves Azurite as it ships (to measure what the index changes).
if (process.env.AZURITE_PARTITION_INDEX !== "off") install();
