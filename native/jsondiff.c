/* proxy._jsondiff: the JSON walk of proxy/diffing.py, in C, on documents parsed by yyjson.
 *
 * Why: diffing two 64 KiB JSON bodies in Python costs ~0.5 ms, most of it building Python
 * objects for both documents (orjson) before the walk even starts. Here both documents are
 * parsed by yyjson into flat arrays and compared in place; Python objects are made only for
 * what is reported (field keys, and the renderings of each new difference's values, as
 * ``_render`` makes them: here for numbers, constants and plain strings, by ``_render`` for
 * the rest).
 *
 * What: ``diff()`` does exactly what ``_diff_json_body`` does after parsing: the same visits
 * in the same order (``_diff_dicts``, ``_diff_lists``, ``_diff_values``, ``_same``, the
 * one-exemplar-per-shape rule, the depth cap), on Python's notion of equality (``1 == 1.0``,
 * ``True == 1``), after applying the ``ignore_fields`` trie as ``_strip`` would. Each
 * function below names the Python function it mirrors; tests/test_jsondiff_native.py checks
 * the two against each other on tables and generated documents.
 *
 * Three passes: yyjson parses the live body (into a pool kept between calls), and the shadow's
 * document is built on the live one's text (align_doc: copied where the texts agree, parsed
 * by yyjson where they do not; parsed whole where they do not line up); `fuse` goes over
 * the two documents once, pair by pair as the walk pairs values, checking what must be left
 * to Python and recording which values of the live document equal their counterparts; the
 * walk then visits what Python's walk visits, reading those bits instead of comparing.
 *
 * Returns None, and leaves the body to the Python walk, for anything it does not mirror
 * exactly: text yyjson does not parse (not JSON, or NaN/Infinity, lone surrogates, a BOM,
 * which the Python parsers handle their own way), integers beyond 64 bits and floats beyond
 * double (Python's are exact), objects with a repeated key (Python keeps the last one),
 * nesting deeper than MAX_NEST, more ignore states than MAX_STATES.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "yyjson.h"

typedef yyjson_val V;

#define MAX_NEST 500   /* deeper documents go to the Python walk (its parsers' limits) */
#define MAX_PATH 256   /* segments on the path stack; the walk stops at max_depth <= 200 */
#define MAX_NODES 8192 /* field-key nodes kept between calls, then cleared */
#define MAX_NAME_BYTES (8 << 20) /* ... or when their names and exact paths come to this many bytes */
#define MAX_KEY_NAME 64 /* proxy.diffing.MAX_KEY_NAME: a longer member name is an id */
#define WIDE_OBJECT 128 /* proxy.diffing.WIDE_OBJECT: all member names of a wider object fold */
#define WIDE_TAG (1 << 30) /* a Slot's parent for the members of a wide object: Key id | WIDE_TAG */
#define MAX_STATES 64  /* ignore-trie states at one point of the document */
#define READ_FLAGS YYJSON_READ_BIGNUM_AS_RAW
/* Both documents are parsed into one pool kept between calls: a fresh malloc per parse costs
 * as much as the parse (new pages, faulted in), ~30 us of ~60 us for a 64 KiB body here.
 * Kept up to POOL_KEEP bytes (yyjson needs up to ~13x the text: two ~300 KiB bodies);
 * larger pairs use yyjson's own allocator. */
#define POOL_KEEP ((size_t)8 << 20)
#define OUT_KEEP ((size_t)1 << 18) /* values of a built shadow document kept between calls */

/* Python's type of a parsed value (T_IGN: an element replaced by _IGNORED). */
enum { T_NULL, T_BOOL, T_INT, T_FLOAT, T_STR, T_LIST, T_DICT, T_IGN };

/* Marks set by the ignore pass, one byte per value of a document. */
#define M_REMOVED 1 /* an object member deleted by an ignore pattern */
#define M_IGNORED 2 /* an array element replaced by _IGNORED */
#define M_HOLEY 4   /* an object with a member removed: the others need no member marks read */

/* Bits set by fuse, one byte per value of the live document (Ctx.eq_a). */
#define EQ 1        /* equal to its counterpart in the shadow document */
#define SAME_PREV 2 /* an object with its previous sibling's names, in order (no ignore marks) */

/* ---- field keys and member names -----------------------------------------------------------
 * Kept across calls, so a member's field key is found with one hash of its name, and Python
 * strings are made once per key, not per member.
 * - a Key is one field key string ("$.items[*].price", "$.users.{id}"): what is counted as
 *   compared or differing. `field_gen` / `diff_gen` / `shape_gen` / `scalars_gen` equal to the
 *   call's generation mean: counted as a field / found differing / found missing, extra or of
 *   another type / its "list of scalars" shape seen.
 * - a Node is one member name under one key (what _child() is called with): its exact path
 *   segment and its Key. Several names can share a Key (ids fold to ".{id}"); shapes are
 *   tuples of names, so they are made of Node ids. */
typedef struct {
    PyObject *ck; /* the field key */
    int star;     /* the key + "[*]", -1 until made */
    int idk;      /* the key + ".{id}", -1 until made */
    uint32_t field_gen, diff_gen, shape_gen, scalars_gen, last_gen, run_gen;
    V *last; /* in call `last_gen`: the last object whose shape under this key was looked up */
    V *run;  /* in call `run_gen`: the last object diff_dicts met under this key, whose */
    size_t run_off; /* members' Nodes are at Ctx.arena[run_off...] */
    int run_wide;   /* ... looked up as the members of a wide object (WIDE_OBJECT) */
} Key;

typedef struct {
    PyObject *exact; /* ".name", '["a b"]'; NULL until a path needs it (node_exact) */
    int key;
    int parent;       /* the Key the name is under */
    const char *name; /* the name (its Slot's copy), for node_exact */
    size_t len;
} Node;

typedef struct {
    uint64_t h;
    char *name; /* NULL: empty slot */
    size_t len;
    int parent, node;
} Slot;

static Node *g_nodes;
static int g_n_nodes, g_cap_nodes;
static Key *g_keys;
static int g_n_keys, g_cap_keys;
static PyObject *g_key_ids; /* field key string -> Key id */
static Slot *g_slots;
static size_t g_cap_slots, g_used_slots;
static uint32_t g_gen;

static PyObject *K_CHANGED, *K_TYPE, *K_MISSING, *K_EXTRA, *K_LENGTH, *S_ROOT, *S_STAR, *S_ID, *S_NULL, *S_TRUE,
    *S_FALSE;
#define MAX_VALUE_CHARS 200 /* proxy.diffing.MAX_VALUE_CHARS: _clip()'s limit */

static uint64_t hash_name(int parent, const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)(uint32_t)parent;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static int grow(void **arr, int *cap, size_t size) {
    int n = *cap ? 2 * *cap : 256;
    void *p = realloc(*arr, (size_t)n * size);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    *arr = p;
    *cap = n;
    return 0;
}

/* the Key of field key `ck` (steals it), made on first sight */
static int key_of(PyObject *ck) {
    PyObject *got = PyDict_GetItemWithError(g_key_ids, ck);
    if (got) {
        Py_DECREF(ck);
        return (int)PyLong_AsLong(got);
    }
    if (PyErr_Occurred() || (g_n_keys == g_cap_keys && grow((void **)&g_keys, &g_cap_keys, sizeof(Key)) < 0)) {
        Py_DECREF(ck);
        return -1;
    }
    PyObject *id = PyLong_FromLong(g_n_keys);
    if (!id || PyDict_SetItem(g_key_ids, ck, id) < 0) {
        Py_XDECREF(id);
        Py_DECREF(ck);
        return -1;
    }
    Py_DECREF(id);
    g_keys[g_n_keys] = (Key){.ck = ck, .star = -1, .idk = -1};
    return g_n_keys++;
}

static int node_new(PyObject *exact, int key, int parent, const char *name, size_t len) { /* steals exact */
    if (g_n_nodes == g_cap_nodes && grow((void **)&g_nodes, &g_cap_nodes, sizeof(Node)) < 0) {
        Py_XDECREF(exact);
        return -1;
    }
    g_nodes[g_n_nodes] = (Node){exact, key, parent, name, len};
    return g_n_nodes++;
}

static size_t g_name_bytes; /* names copied into g_slots, twice: their exact paths too */

static int nodes_reset(void) {
    g_name_bytes = 0;
    for (int i = 0; i < g_n_nodes; i++)
        Py_XDECREF(g_nodes[i].exact);
    for (int i = 0; i < g_n_keys; i++)
        Py_DECREF(g_keys[i].ck);
    g_n_nodes = g_n_keys = 0;
    Py_XDECREF(g_key_ids);
    if (!(g_key_ids = PyDict_New()))
        return -1;
    for (size_t i = 0; i < g_cap_slots; i++)
        free(g_slots[i].name);
    free(g_slots);
    g_slots = calloc(1024, sizeof(Slot));
    if (!g_slots) {
        g_cap_slots = 0;
        PyErr_NoMemory();
        return -1;
    }
    g_cap_slots = 1024;
    g_used_slots = 0;
    return key_of(Py_NewRef(S_ROOT)); /* Key 0: "$" */
}

static int slots_grow(void) {
    size_t cap = 2 * g_cap_slots;
    Slot *tab = calloc(cap, sizeof(Slot));
    if (!tab) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < g_cap_slots; i++) {
        if (!g_slots[i].name)
            continue;
        size_t j = g_slots[i].h & (cap - 1);
        while (tab[j].name)
            j = (j + 1) & (cap - 1);
        tab[j] = g_slots[i];
    }
    free(g_slots);
    g_slots = tab;
    g_cap_slots = cap;
    return 0;
}

/* ---- one call ------------------------------------------------------------------------------ */

typedef struct TNode TNode;
typedef struct {
    char *name;
    size_t len;
    TNode *child;
} TKey;
typedef struct {
    Py_ssize_t index;
    TNode *child;
} TIdx;
struct TNode { /* proxy.diffing._Node */
    TKey *keys;
    Py_ssize_t nkeys;
    TIdx *idx;
    Py_ssize_t nidx;
    TNode *any_key, *any_index; /* "{id}" compiles to any_key, as "*" does */
    int terminal;
};

typedef struct {
    int node;         /* >= 0: an object member, its key's node; -1: an array element */
    Py_ssize_t index; /* the element's index */
} Seg;

typedef struct {
    uint64_t h;
    size_t off, len; /* in the shape arena; len 0: empty slot */
} ShapeSlot;

typedef struct {
    PyObject *child_fn, *render_fn, *ignored;
    PyObject *render_pair_fn; /* or NULL: (live str, shadow str) -> (rendered, rendered) */
    PyObject *events; /* [(path, kind, live, shadow, key)], first difference per key */
    int *field_ids;   /* nodes counted as fields, in order */
    size_t n_fields, cap_fields;
    size_t max_fields; /* more field keys than this: TooManyFields, the walk stops */
    Py_ssize_t room; /* differences whose values are still rendered (the rest get None) */
    int max_depth;
    uint32_t gen;
    /* ignore marks: per document, or NULL when no pattern applies */
    V *base_a, *base_b;
    size_t count_a, count_b;
    uint8_t *mask_a, *mask_b;
    int masked;       /* an ignore pattern applies: marks exist */
    int any_ignored;  /* some array element is M_IGNORED (else ptype reads no marks) */
    uint8_t *eq_a; /* per value of the live document: EQ, SAME_PREV (fuse) */
    /* per value of the shadow document: 1 + the index of the live value whose text it copies
     * (every value of a copied sub-tree names its own, see align_doc); 0 for the rest. NULL:
     * the shadow was parsed whole.
     * When both documents were built on a kept answer (see "kept answers"), src_a says the
     * same of the live document, and both index the kept answer's values. */
    const uint32_t *src_a, *src_b;
    /* with src_a: per value of the kept answer, whether it is an object with its previous
     * sibling's names (SAME_PREV as fuse_copy finds it) */
    const uint8_t *kept_same;
    Seg path[MAX_PATH];
    int plen;
    /* shapes seen: (key node, member key nodes...) of objects visited as exemplars */
    int *arena;
    size_t arena_len, arena_cap;
    ShapeSlot *shapes;
    size_t shapes_cap, shapes_used;
} Ctx;

static inline uint8_t mark_of(const Ctx *c, V *v) {
    if (!c->masked)
        return 0;
    if (c->mask_a && v >= c->base_a && v < c->base_a + c->count_a)
        return c->mask_a[v - c->base_a];
    if (c->mask_b && v >= c->base_b && v < c->base_b + c->count_b)
        return c->mask_b[v - c->base_b];
    return 0;
}

static inline int ptype(const Ctx *c, V *v) {
    if (c->any_ignored && (mark_of(c, v) & M_IGNORED))
        return T_IGN;
    switch (unsafe_yyjson_get_type(v)) {
    case YYJSON_TYPE_NULL:
        return T_NULL;
    case YYJSON_TYPE_BOOL:
        return T_BOOL;
    case YYJSON_TYPE_NUM:
        return unsafe_yyjson_get_subtype(v) == YYJSON_SUBTYPE_REAL ? T_FLOAT : T_INT;
    case YYJSON_TYPE_STR:
        return T_STR;
    case YYJSON_TYPE_ARR:
        return T_LIST;
    case YYJSON_TYPE_OBJ:
        return T_DICT;
    default:
        return T_NULL; /* raw: left to Python by fuse / check_doc before any walk */
    }
}

static inline int removed(const Ctx *c, V *v) { return c->masked && (mark_of(c, v) & M_REMOVED); }
static inline int holey(const Ctx *c, V *o) { return c->masked && (mark_of(c, o) & M_HOLEY); }

static inline int is_num(int t) { return t == T_BOOL || t == T_INT || t == T_FLOAT; }
static inline int is_scalar(int t) { return t != T_LIST && t != T_DICT; }
static inline int same_json_type(int ta, int tb) { /* _same_json_type */
    return ta == tb || ((ta == T_INT || ta == T_FLOAT) && (tb == T_INT || tb == T_FLOAT));
}

/* len(dict) after the ignore pass */
static size_t dict_len(const Ctx *c, V *o) {
    size_t n = unsafe_yyjson_get_len(o);
    if (!holey(c, o))
        return n;
    size_t live = 0;
    V *k = unsafe_yyjson_get_first(o);
    for (size_t i = 0; i < n; i++, k = unsafe_yyjson_get_next(k + 1))
        live += !removed(c, k + 1);
    return live;
}

/* memcmp(a, b, n) == 0 for the short strings keys are, without a call */
static inline int bytes_eq(const char *a, const char *b, size_t n) {
    while (n >= 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y)
            return 0;
        a += 8;
        b += 8;
        n -= 8;
    }
    while (n--)
        if (*a++ != *b++)
            return 0;
    return 1;
}

/* Two member names of parsed documents, equal: bytes_eq without its byte loop for names of up
 * to 8 bytes, the common ones, compared in one masked load. 8 bytes are readable from the
 * start of any member name yyjson parsed: its text is followed by at least a quote, a colon,
 * a value and a closing brace, and yyjson's copy of the text by YYJSON_PADDING_SIZE (4) more
 * (names it unescaped are shorter than their text). Not for strings from elsewhere. */
static inline int names_eq(V *x, V *y) {
    size_t n = unsafe_yyjson_get_len(x);
    if (n != unsafe_yyjson_get_len(y))
        return 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && YYJSON_PADDING_SIZE >= 4
    if (n <= 8) {
        uint64_t a, b;
        memcpy(&a, unsafe_yyjson_get_str(x), 8);
        memcpy(&b, unsafe_yyjson_get_str(y), 8);
        return ((a ^ b) & (n == 8 ? ~(uint64_t)0 : ((uint64_t)1 << (8 * n)) - 1)) == 0;
    }
#endif
    return bytes_eq(unsafe_yyjson_get_str(x), unsafe_yyjson_get_str(y), n);
}

/* the same member names in the same order (ignore marks aside) */
static int same_names(V *a, V *b) {
    size_t n = unsafe_yyjson_get_len(a);
    if (n != unsafe_yyjson_get_len(b))
        return 0;
    V *x = unsafe_yyjson_get_first(a), *y = unsafe_yyjson_get_first(b);
    for (size_t i = 0; i < n; i++, x = unsafe_yyjson_get_next(x + 1), y = unsafe_yyjson_get_next(y + 1))
        if (!names_eq(x, y))
            return 0;
    return 1;
}

/* the same member names in the same order, the same ones removed by the ignore pass */
static int same_marked_names(const Ctx *c, V *a, V *b) {
    if (!holey(c, a) && !holey(c, b))
        return same_names(a, b);
    size_t n = unsafe_yyjson_get_len(a);
    if (n != unsafe_yyjson_get_len(b))
        return 0;
    V *x = unsafe_yyjson_get_first(a), *y = unsafe_yyjson_get_first(b);
    for (size_t i = 0; i < n; i++, x = unsafe_yyjson_get_next(x + 1), y = unsafe_yyjson_get_next(y + 1))
        if (!names_eq(x, y) || removed(c, x + 1) != removed(c, y + 1))
            return 0;
    return 1;
}

/* o.get(name): `hint` is o's key at the caller's position (same key order is the usual case) */
static V *dict_get(const Ctx *c, V *o, V *name, V *hint) {
    int h = holey(c, o);
    if (hint && names_eq(hint, name))
        return h && removed(c, hint + 1) ? NULL : hint + 1;
    size_t len = unsafe_yyjson_get_len(o);
    V *k = unsafe_yyjson_get_first(o);
    for (size_t i = 0; i < len; i++, k = unsafe_yyjson_get_next(k + 1))
        if (names_eq(k, name))
            return h && removed(c, k + 1) ? NULL : k + 1; /* names are unique (fuse, check_doc) */
    return NULL;
}

/* The members of object `a` that the ignore pass kept, each with the member of `b` at the same
 * position as the hint for finding its counterpart:
 *     for (Members m = members(c, a, b); next_member(c, &m);) ... m.key, m.val, m.hint */
typedef struct {
    V *key, *val, *hint; /* the current member of a; b's key at its position, or NULL */
    V *k, *h;            /* the next ones */
    size_t i, n, nb;
    int holey; /* a has members the ignore pass removed */
} Members;

static inline Members members(const Ctx *c, V *a, V *b) {
    return (Members){NULL, NULL, NULL, unsafe_yyjson_get_first(a), unsafe_yyjson_get_first(b), 0,
                     unsafe_yyjson_get_len(a), unsafe_yyjson_get_len(b), holey(c, a)};
}

static inline int next_member(const Ctx *c, Members *m) {
    while (m->i < m->n) {
        m->key = m->k;
        m->val = m->k + 1;
        m->hint = m->i < m->nb ? m->h : NULL;
        m->k = unsafe_yyjson_get_next(m->val);
        if (m->i++ < m->nb)
            m->h = unsafe_yyjson_get_next(m->h + 1);
        if (!m->holey || !removed(c, m->val))
            return 1;
    }
    return 0;
}

static void int_of(V *v, int *neg, uint64_t *mag) {
    if (unsafe_yyjson_get_type(v) == YYJSON_TYPE_BOOL) {
        *neg = 0;
        *mag = unsafe_yyjson_get_bool(v);
    } else if (unsafe_yyjson_get_subtype(v) == YYJSON_SUBTYPE_UINT) {
        *neg = 0;
        *mag = unsafe_yyjson_get_uint(v);
    } else {
        int64_t s = unsafe_yyjson_get_sint(v);
        *neg = s < 0;
        *mag = s < 0 ? (uint64_t)(-(s + 1)) + 1 : (uint64_t)s;
    }
}

/* Python's == between bools, ints and floats: exact, as Python compares int with float */
static int num_eq(int ta, V *a, int tb, V *b) {
    if (ta == T_FLOAT && tb == T_FLOAT)
        return unsafe_yyjson_get_real(a) == unsafe_yyjson_get_real(b);
    if (ta != T_FLOAT && tb != T_FLOAT) {
        int na, nb;
        uint64_t ma, mb;
        int_of(a, &na, &ma);
        int_of(b, &nb, &mb);
        return ma == mb && (na == nb || ma == 0);
    }
    double d = unsafe_yyjson_get_real(ta == T_FLOAT ? a : b);
    int neg;
    uint64_t mag;
    int_of(ta == T_FLOAT ? b : a, &neg, &mag);
    if (!isfinite(d) || d != floor(d))
        return 0;
    if (!neg)
        return d >= 0 && d < 18446744073709551616.0 && (uint64_t)d == mag;
    return d < 0 && d >= -9223372036854775808.0 && (uint64_t)(-d) == mag;
}

/* a == b for two values of which at most one is a container (then: 0), as Python compares
 * the parsed (and stripped) values */
static inline int scalar_eq(int ta, V *a, int tb, V *b) {
    if (is_num(ta) && is_num(tb)) {
        if (a->tag == b->tag && a->uni.u64 == b->uni.u64)
            return 1; /* the same type and bits: the same number (the parser refuses NaN) */
        return num_eq(ta, a, tb, b);
    }
    if (ta != tb)
        return 0;
    switch (ta) {
    case T_NULL:
    case T_IGN:
        return 1;
    case T_STR:
        return unsafe_yyjson_get_len(a) == unsafe_yyjson_get_len(b) &&
               bytes_eq(unsafe_yyjson_get_str(a), unsafe_yyjson_get_str(b), unsafe_yyjson_get_len(a));
    default:
        return 0;
    }
}

/* x == y for a value x of the live document and its counterpart y (the value the walk pairs
 * it with): looked up in the bits `fuse` recorded. In the walk of a body against itself,
 * x is y. */
static inline int eqbit(const Ctx *c, V *x, V *y) { return x == y || (c->eq_a[x - c->base_a] & EQ); }

/* ---- nodes for keys -------------------------------------------------------------------------- */

static int is_id(const char *s, size_t n);

/* key + "[*]" (star) or key + ".{id}", made once per key (g_keys may move in key_of: the
 * slot is written by index after it) */
static int suffixed(int parent, int star) {
    int got = star ? g_keys[parent].star : g_keys[parent].idk;
    if (got >= 0)
        return got;
    PyObject *ck = PyUnicode_Concat(g_keys[parent].ck, star ? S_STAR : S_ID);
    if (!ck)
        return -1;
    int id = key_of(ck);
    if (id >= 0 && star)
        g_keys[parent].star = id;
    else if (id >= 0)
        g_keys[parent].idk = id;
    return id;
}

static inline int id_of(int parent) { return suffixed(parent, 0); }
static inline int star_of(int parent) { return suffixed(parent, 1); }

/* The exact path segment _child makes of a name of printable ASCII without '"' or '\\'
 * (what most names are): ".name" for an identifier (ASCII's rule is str.isidentifier()'s),
 * else '["name"]' (what _ENCODE makes of such a name). 0 with *exact NULL: a name for
 * Python's _child. */
static int plain_exact(const char *s, size_t n, PyObject **exact) {
    *exact = NULL;
    if (!n)
        return 0;
    int ident = !(s[0] >= '0' && s[0] <= '9');
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\')
            return 0;
        ident &= (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_';
    }
    size_t len = ident ? n + 1 : n + 4;
    PyObject *ex = PyUnicode_New((Py_ssize_t)len, 127);
    if (!ex)
        return -1;
    char *d = (char *)PyUnicode_1BYTE_DATA(ex);
    if (ident) {
        d[0] = '.';
        memcpy(d + 1, s, n);
    } else {
        memcpy(d, "[\"", 2);
        memcpy(d + 2, s, n);
        memcpy(d + 2 + n, "\"]", 2);
    }
    *exact = ex;
    return 0;
}

/* What _child(key, name) returns, made here for a plain name (plain_exact): its exact path
 * segment, and the child's Key, that of key + ".{id}" for an id (is_id), else key + the
 * segment. 0 with *exact NULL: a name for Python's _child. */
static int plain_child(int parent, const char *s, size_t n, PyObject **exact, int *key) {
    if (plain_exact(s, n, exact) < 0)
        return -1;
    if (!*exact)
        return 0;
    if (is_id(s, n)) {
        *key = id_of(parent);
    } else {
        PyObject *ck = PyUnicode_Concat(g_keys[parent].ck, *exact);
        *key = ck ? key_of(ck) : -1;
    }
    if (*key < 0) {
        Py_CLEAR(*exact);
        return -1;
    }
    return 0;
}

/* _child(key, name): the Node of member `name` under Key `parent` */
/* fn(x, y), which must return a pair: its items (new references) in *first and *second */
static int call_for_pair(PyObject *fn, PyObject *x, PyObject *y, const char *what, PyObject **first,
                         PyObject **second) {
    PyObject *got = PyObject_CallFunctionObjArgs(fn, x, y, NULL);
    if (!got)
        return -1;
    if (!PyTuple_Check(got) || PyTuple_GET_SIZE(got) != 2) {
        Py_DECREF(got);
        PyErr_Format(PyExc_TypeError, "%s must return a pair", what);
        return -1;
    }
    *first = Py_NewRef(PyTuple_GET_ITEM(got, 0));
    *second = Py_NewRef(PyTuple_GET_ITEM(got, 1));
    Py_DECREF(got);
    return 0;
}

/* _child(key, name), or _wide_child for a member of a wide object (`wide`): the Node of
 * member `name` under Key `parent` (a name has one Node of each kind under a Key). A wide
 * object's member takes the parent's ".{id}" whatever its name; its exact segment is made
 * only if a path needs it (node_exact): a map of a million names reports a few. */
static int child_of(Ctx *c, int parent, V *name, int wide) {
    const char *s = unsafe_yyjson_get_str(name);
    size_t n = unsafe_yyjson_get_len(name);
    int tag = wide ? parent | WIDE_TAG : parent;
    uint64_t h = hash_name(tag, s, n);
    size_t j = h & (g_cap_slots - 1);
    for (; g_slots[j].name; j = (j + 1) & (g_cap_slots - 1)) {
        Slot *sl = &g_slots[j];
        if (sl->h == h && sl->parent == tag && sl->len == n && bytes_eq(sl->name, s, n))
            return sl->node;
    }
    PyObject *exact = NULL;
    int key;
    if (wide) {
        if ((key = id_of(parent)) < 0)
            return -1;
    } else if (plain_child(parent, s, n, &exact, &key) < 0) {
        return -1;
    } else if (!exact) {
        PyObject *pname = PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, "strict");
        if (!pname)
            return -1;
        PyObject *ck;
        int rc = call_for_pair(c->child_fn, g_keys[parent].ck, pname, "child()", &exact, &ck);
        Py_DECREF(pname);
        if (rc < 0)
            return -1;
        if ((key = key_of(ck)) < 0) {
            Py_DECREF(exact);
            return -1;
        }
    }
    char *copy = malloc(n ? n : 1);
    if (!copy) {
        Py_XDECREF(exact);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(copy, s, n);
    int id = node_new(exact, key, parent, copy, n);
    if (id < 0) {
        free(copy);
        return -1;
    }
    if (2 * (g_used_slots + 1) > g_cap_slots && slots_grow() < 0) {
        free(copy);
        return -1; /* the node stays, unreachable until the next reset: harmless */
    }
    j = h & (g_cap_slots - 1);
    while (g_slots[j].name)
        j = (j + 1) & (g_cap_slots - 1);
    g_slots[j] = (Slot){h, copy, n, tag, id};
    g_used_slots++;
    g_name_bytes += 2 * n;
    return id;
}

static PyObject *TooManyFields; /* raised by mark_field past max_fields; diff() returns False */

static int mark_field(Ctx *c, int node) {
    if (g_keys[node].field_gen == c->gen)
        return 0;
    if (c->n_fields >= c->max_fields) {
        PyErr_SetNone(TooManyFields);
        return -1;
    }
    g_keys[node].field_gen = c->gen;
    if (c->n_fields == c->cap_fields) {
        size_t cap = c->cap_fields ? 2 * c->cap_fields : 64;
        int *p = realloc(c->field_ids, cap * sizeof(int));
        if (!p) {
            PyErr_NoMemory();
            return -1;
        }
        c->field_ids = p;
        c->cap_fields = cap;
    }
    c->field_ids[c->n_fields++] = node;
    return 0;
}

/* the Key of member name `k` under Key `key` (`wide`: of a wide object), counted as a field;
 * its Node in *nm */
static int member_key(Ctx *c, int key, V *k, int wide, int *nm) {
    if ((*nm = child_of(c, key, k, wide)) < 0)
        return -1;
    int ck = g_nodes[*nm].key;
    return mark_field(c, ck) < 0 ? -1 : ck;
}

/* ---- reporting -------------------------------------------------------------------------------- */

static PyObject *to_py(const Ctx *c, V *v) {
    switch (ptype(c, v)) {
    case T_IGN:
        return Py_NewRef(c->ignored);
    case T_NULL:
        Py_RETURN_NONE;
    case T_BOOL:
        return PyBool_FromLong(unsafe_yyjson_get_bool(v));
    case T_INT:
        if (unsafe_yyjson_get_subtype(v) == YYJSON_SUBTYPE_UINT)
            return PyLong_FromUnsignedLongLong(unsafe_yyjson_get_uint(v));
        return PyLong_FromLongLong(unsafe_yyjson_get_sint(v));
    case T_FLOAT:
        return PyFloat_FromDouble(unsafe_yyjson_get_real(v));
    case T_STR:
        return PyUnicode_DecodeUTF8(unsafe_yyjson_get_str(v), (Py_ssize_t)unsafe_yyjson_get_len(v), "strict");
    case T_LIST: {
        size_t n = unsafe_yyjson_get_len(v);
        PyObject *out = PyList_New((Py_ssize_t)n);
        if (!out)
            return NULL;
        V *x = unsafe_yyjson_get_first(v);
        for (size_t i = 0; i < n; i++, x = unsafe_yyjson_get_next(x)) {
            PyObject *item = to_py(c, x);
            if (!item) {
                Py_DECREF(out);
                return NULL;
            }
            PyList_SET_ITEM(out, (Py_ssize_t)i, item);
        }
        return out;
    }
    case T_DICT: {
        PyObject *out = PyDict_New();
        if (!out)
            return NULL;
        size_t n = unsafe_yyjson_get_len(v);
        V *k = unsafe_yyjson_get_first(v);
        for (size_t i = 0; i < n; i++, k = unsafe_yyjson_get_next(k + 1)) {
            if (removed(c, k + 1))
                continue;
            PyObject *key = PyUnicode_DecodeUTF8(unsafe_yyjson_get_str(k), (Py_ssize_t)unsafe_yyjson_get_len(k),
                                                 "strict");
            PyObject *val = key ? to_py(c, k + 1) : NULL;
            if (!val || PyDict_SetItem(out, key, val) < 0) {
                Py_XDECREF(key);
                Py_XDECREF(val);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(key);
            Py_DECREF(val);
        }
        return out;
    }
    }
    Py_RETURN_NONE;
}

/* A Node's exact path segment (borrowed), made on first need for a wide object's member:
 * plain_exact's, or _child's (whose key is not this Node's) */
static PyObject *node_exact(const Ctx *c, int id) {
    if (g_nodes[id].exact)
        return g_nodes[id].exact;
    PyObject *ex;
    if (plain_exact(g_nodes[id].name, g_nodes[id].len, &ex) < 0)
        return NULL;
    if (!ex) {
        PyObject *pname = PyUnicode_DecodeUTF8(g_nodes[id].name, (Py_ssize_t)g_nodes[id].len, "strict");
        if (!pname)
            return NULL;
        PyObject *ck;
        int rc = call_for_pair(c->child_fn, g_keys[g_nodes[id].parent].ck, pname, "child()", &ex, &ck);
        Py_DECREF(pname);
        if (rc < 0)
            return NULL;
        Py_DECREF(ck);
    }
    g_nodes[id].exact = ex; /* by index: no walk runs during the call (g_busy), g_nodes stays */
    return ex;
}

static PyObject *path_str(const Ctx *c) {
    PyObject *parts = PyList_New(0);
    if (!parts || PyList_Append(parts, S_ROOT) < 0)
        goto fail;
    for (int i = 0; i < c->plen; i++) {
        if (c->path[i].node >= 0) {
            PyObject *ex = node_exact(c, c->path[i].node);
            if (!ex || PyList_Append(parts, ex) < 0)
                goto fail;
        } else {
            PyObject *seg = PyUnicode_FromFormat("[%zd]", c->path[i].index);
            if (!seg || PyList_Append(parts, seg) < 0) {
                Py_XDECREF(seg);
                goto fail;
            }
            Py_DECREF(seg);
        }
    }
    PyObject *empty = PyUnicode_FromStringAndSize("", 0);
    PyObject *out = empty ? PyUnicode_Join(empty, parts) : NULL;
    Py_XDECREF(empty);
    Py_DECREF(parts);
    return out;
fail:
    Py_XDECREF(parts);
    return NULL;
}

/* _render(to_py(c, v)): the renderings _render makes without the JSON encoder (numbers and
 * constants: their repr / literal), and strings with nothing to escape and short enough that
 * _clip leaves them whole, made here; anything else by _render itself. */
/* a string with no quote, backslash or control character, quoted, at buf[*len]: what the
 * encoder writes for it (ensure_ascii=False: the rest as is); 0, or -1 (another string, or no
 * room below cap) */
static int json_str(V *v, char *buf, size_t cap, size_t *len) {
    size_t n = unsafe_yyjson_get_len(v), at = *len;
    const unsigned char *t = (const unsigned char *)unsafe_yyjson_get_str(v);
    if (at + n + 2 > cap)
        return -1;
    buf[at] = '"';
    for (size_t i = 0; i < n; i++) {
        if (t[i] < 0x20 || t[i] == '"' || t[i] == '\\')
            return -1;
        buf[at + 1 + i] = (char)t[i];
    }
    buf[at + n + 1] = '"';
    *len = at + n + 2;
    return 0;
}

/* The text proxy.diffing._ENCODE makes of v (compact separators, ensure_ascii=False, numbers
 * as their repr) at buf[*len], below cap: 0; -1 where this does not write it as the encoder
 * would (a string to escape, a float not finite, deeper than 32) or it does not fit; -2: an
 * error (set). The values of a document with no ignore marks only. */
static int json_text(V *v, char *buf, size_t cap, size_t *len, int depth) {
    char num[32];
    size_t n;
    switch (unsafe_yyjson_get_type(v)) {
    case YYJSON_TYPE_NULL:
        n = (size_t)snprintf(num, sizeof num, "null");
        break;
    case YYJSON_TYPE_BOOL:
        n = (size_t)snprintf(num, sizeof num, "%s", unsafe_yyjson_get_bool(v) ? "true" : "false");
        break;
    case YYJSON_TYPE_NUM:
        if (unsafe_yyjson_get_subtype(v) == YYJSON_SUBTYPE_UINT) {
            n = (size_t)snprintf(num, sizeof num, "%llu", (unsigned long long)unsafe_yyjson_get_uint(v));
        } else if (unsafe_yyjson_get_subtype(v) == YYJSON_SUBTYPE_SINT) {
            n = (size_t)snprintf(num, sizeof num, "%lld", (long long)unsafe_yyjson_get_sint(v));
        } else {
            double d = unsafe_yyjson_get_real(v);
            if (!isfinite(d))
                return -1;
            char *text = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL); /* float.__repr__ */
            if (!text)
                return -2;
            n = strlen(text);
            int fits = *len + n <= cap;
            if (fits)
                memcpy(buf + *len, text, n), *len += n;
            PyMem_Free(text);
            return fits ? 0 : -1;
        }
        break;
    case YYJSON_TYPE_STR:
        return json_str(v, buf, cap, len);
    case YYJSON_TYPE_ARR:
    case YYJSON_TYPE_OBJ: {
        int obj = unsafe_yyjson_is_obj(v);
        size_t count = unsafe_yyjson_get_len(v);
        if (depth > 32 || *len + 2 > cap)
            return -1;
        buf[(*len)++] = obj ? '{' : '[';
        V *x = unsafe_yyjson_get_first(v);
        for (size_t i = 0; i < count; i++) {
            int rc;
            if (i) {
                if (*len + 1 > cap)
                    return -1;
                buf[(*len)++] = ',';
            }
            if (obj) {
                if ((rc = json_str(x, buf, cap, len)) < 0)
                    return rc;
                if (*len + 1 > cap)
                    return -1;
                buf[(*len)++] = ':';
                x++;
            }
            if ((rc = json_text(x, buf, cap, len, depth + 1)) < 0)
                return rc;
            x = unsafe_yyjson_get_next(x);
        }
        if (*len + 1 > cap)
            return -1;
        buf[(*len)++] = obj ? '}' : ']';
        return 0;
    }
    default:
        return -1;
    }
    if (*len + n > cap)
        return -1;
    memcpy(buf + *len, num, n);
    *len += n;
    return 0;
}

static PyObject *render(const Ctx *c, V *v) {
    switch (ptype(c, v)) {
    case T_NULL:
        return Py_NewRef(S_NULL);
    case T_BOOL:
        return Py_NewRef(unsafe_yyjson_get_bool(v) ? S_TRUE : S_FALSE);
    case T_INT:
        if (unsafe_yyjson_get_subtype(v) == YYJSON_SUBTYPE_UINT)
            return PyUnicode_FromFormat("%llu", (unsigned long long)unsafe_yyjson_get_uint(v));
        return PyUnicode_FromFormat("%lld", (long long)unsafe_yyjson_get_sint(v));
    case T_FLOAT: {
        double d = unsafe_yyjson_get_real(v);
        if (!isfinite(d))
            break;
        char *text = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL); /* float.__repr__ */
        if (!text)
            return NULL;
        PyObject *out = PyUnicode_FromString(text);
        PyMem_Free(text);
        return out;
    }
    case T_STR:
    case T_LIST:
    case T_DICT: {
        /* What the encoder writes, where json_text writes it as the encoder would, in at most
         * MAX_VALUE_CHARS bytes (so at most as many characters: not clipped). With ignore
         * marks a container's Python value is not the document's (members removed, elements
         * replaced): _render then. */
        char buf[MAX_VALUE_CHARS];
        size_t n = 0;
        int rc = c->masked && !unsafe_yyjson_is_str(v) ? -1 : json_text(v, buf, sizeof buf, &n, 0);
        if (rc == -2)
            return NULL;
        if (rc == 0)
            return PyUnicode_DecodeUTF8(buf, (Py_ssize_t)n, "strict");
        break;
    }
    default:
        break;
    }
    PyObject *value = to_py(c, v);
    if (!value)
        return NULL;
    PyObject *out = PyObject_CallOneArg(c->render_fn, value);
    Py_DECREF(value);
    return out;
}

/* one FieldDiff's fields: (path, kind, live, shadow, key) */
static int emit(Ctx *c, int node, PyObject *kind, PyObject *live, PyObject *shadow) { /* steals */
    PyObject *path = (live && shadow) ? path_str(c) : NULL;
    PyObject *ev = path ? PyTuple_Pack(5, path, kind, live, shadow, g_keys[node].ck) : NULL;
    Py_XDECREF(path);
    Py_XDECREF(live);
    Py_XDECREF(shadow);
    if (!ev)
        return -1;
    int rc = PyList_Append(c->events, ev);
    Py_DECREF(ev);
    return rc;
}

/* a difference of shape (_Acc.found's SHAPE_KINDS): a member missing or extra, another type */
static inline int is_shape(PyObject *kind) { return kind == K_MISSING || kind == K_EXTRA || kind == K_TYPE; }

/* _Acc.found_values: a or b NULL where absent. One event per key, the first difference's, and
 * one more (its values None) when a difference of shape follows one that was not. */
static int found_values(Ctx *c, int node, PyObject *kind, V *a, V *b) {
    if (mark_field(c, node) < 0)
        return -1;
    Key *k = &g_keys[node];
    if (k->diff_gen == c->gen) {
        if (!is_shape(kind) || k->shape_gen == c->gen)
            return 0;
        k->shape_gen = c->gen;
        return emit(c, node, kind, Py_NewRef(Py_None), Py_NewRef(Py_None));
    }
    k->diff_gen = c->gen;
    if (is_shape(kind))
        k->shape_gen = c->gen;
    PyObject *live, *shadow;
    if (c->room > 0 && c->render_pair_fn && a && b && unsafe_yyjson_is_str(a) && unsafe_yyjson_is_str(b) &&
        (unsafe_yyjson_get_len(a) > MAX_VALUE_CHARS || unsafe_yyjson_get_len(b) > MAX_VALUE_CHARS)) {
        /* Two strings, one too long to render here: rendered as a pair, as _Acc.found_values
         * renders two strings, from where they first differ (each cut at its start alone, two
         * strings alike for their first RENDER_CHARS showed the same text). */
        c->room--;
        PyObject *pa = to_py(c, a), *pb = pa ? to_py(c, b) : NULL;
        int rc = pb ? call_for_pair(c->render_pair_fn, pa, pb, "render_pair()", &live, &shadow) : -1;
        Py_XDECREF(pa);
        Py_XDECREF(pb);
        if (rc < 0)
            return -1;
    } else if (c->room > 0) {
        c->room--;
        live = a ? render(c, a) : Py_NewRef(Py_None);
        shadow = b ? render(c, b) : Py_NewRef(Py_None);
    } else {
        live = Py_NewRef(Py_None);
        shadow = Py_NewRef(Py_None);
    }
    return emit(c, node, kind, live, shadow);
}

/* _Acc.found(path, key, "length", str(len(a)), str(len(b))) */
static int found_length(Ctx *c, int node, size_t na, size_t nb) {
    if (mark_field(c, node) < 0)
        return -1;
    if (g_keys[node].diff_gen == c->gen)
        return 0;
    g_keys[node].diff_gen = c->gen;
    if (c->room > 0)
        c->room--;
    return emit(c, node, K_LENGTH, PyUnicode_FromFormat("%zu", na), PyUnicode_FromFormat("%zu", nb));
}

static inline int push(Ctx *c, int node, Py_ssize_t index) {
    if (c->plen >= MAX_PATH) {
        PyErr_SetString(PyExc_RecursionError, "JSON diff path too deep");
        return -1;
    }
    c->path[c->plen++] = (Seg){node, index};
    return 0;
}

/* ---- shapes (one exemplar per key tuple) ------------------------------------------------------- */

static int arena_reserve(Ctx *c, size_t more) {
    if (c->arena_len + more <= c->arena_cap)
        return 0;
    size_t cap = c->arena_cap ? c->arena_cap : 1024;
    while (cap < c->arena_len + more)
        cap *= 2;
    int *p = realloc(c->arena, cap * sizeof(int));
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    c->arena = p;
    c->arena_cap = cap;
    return 0;
}

static int shapes_grow(Ctx *c) {
    size_t cap = c->shapes_cap ? 2 * c->shapes_cap : 256;
    ShapeSlot *tab = calloc(cap, sizeof(ShapeSlot));
    if (!tab) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < c->shapes_cap; i++) {
        if (!c->shapes[i].len)
            continue;
        size_t j = c->shapes[i].h & (cap - 1);
        while (tab[j].len)
            j = (j + 1) & (cap - 1);
        tab[j] = c->shapes[i];
    }
    free(c->shapes);
    c->shapes = tab;
    c->shapes_cap = cap;
    return 0;
}

/* (ck, tuple(o)) not in shapes: add it, 1; already there: 0; error: -1.
 * `px`: o's previous sibling in its array, or NULL. */
static int dict_shape_new(Ctx *c, int ck, V *o, V *px) {
    Key *key = &g_keys[ck];
    /* Arrays of records: the previous object looked up under this key usually has the same
     * names, so the shape is known (added or found then) without hashing a name; when that
     * object is o's previous sibling, fuse has already compared their names (SAME_PREV). */
    if (key->last_gen == c->gen &&
        ((px && key->last == px && c->eq_a && (c->eq_a[o - c->base_a] & SAME_PREV)) ||
         same_marked_names(c, key->last, o))) {
        key->last = o; /* the same names (and marks): o's next sibling finds its own predecessor */
        return 0;
    }
    key->last_gen = c->gen;
    key->last = o;
    size_t n = unsafe_yyjson_get_len(o);
    int wide = dict_len(c, o) > WIDE_OBJECT;
    if (arena_reserve(c, n + 1) < 0)
        return -1;
    size_t off = c->arena_len, len = 0;
    c->arena[off + len++] = ck;
    V *k = unsafe_yyjson_get_first(o);
    for (size_t i = 0; i < n; i++, k = unsafe_yyjson_get_next(k + 1)) {
        if (removed(c, k + 1))
            continue;
        int id = child_of(c, ck, k, wide);
        if (id < 0)
            return -1;
        c->arena[off + len++] = id;
    }
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint32_t)c->arena[off + i];
        h *= 1099511628211ULL;
    }
    if (2 * (c->shapes_used + 1) > c->shapes_cap && shapes_grow(c) < 0)
        return -1;
    size_t j = h & (c->shapes_cap - 1);
    for (; c->shapes[j].len; j = (j + 1) & (c->shapes_cap - 1)) {
        ShapeSlot *s = &c->shapes[j];
        if (s->h == h && s->len == len && memcmp(c->arena + s->off, c->arena + off, len * sizeof(int)) == 0)
            return 0;
    }
    c->shapes[j] = (ShapeSlot){h, off, len};
    c->shapes_used++;
    c->arena_len += len;
    return 1;
}

/* _shape() of a non-empty list: None (always visit) or (ck, "scalars") */
static int list_shape_new(Ctx *c, int ck, V *list) {
    int first = ptype(c, unsafe_yyjson_get_first(list));
    if (first == T_DICT || first == T_LIST)
        return 1;
    if (g_keys[ck].scalars_gen == c->gen)
        return 0;
    g_keys[ck].scalars_gen = c->gen;
    return 1;
}

static inline int nonempty(const Ctx *c, int t, V *v) {
    return t == T_DICT ? dict_len(c, v) > 0 : unsafe_yyjson_get_len(v) > 0;
}

static inline int shape_new(Ctx *c, int ck, int t, V *v, V *px) {
    return t == T_DICT ? dict_shape_new(c, ck, v, px) : list_shape_new(c, ck, v);
}

/* ---- the walk ---------------------------------------------------------------------------------- */

static int diff_values(Ctx *c, V *a, V *b, int key, int depth);
static int diff_dicts(Ctx *c, V *a, V *b, int key, int depth);

/* _same */
static int same(Ctx *c, V *a, V *b, int key, int depth) {
    if (depth >= c->max_depth)
        return 0;
    if (ptype(c, a) == T_DICT) {
        int wide = dict_len(c, a) > WIDE_OBJECT;
        for (Members m = members(c, a, b); next_member(c, &m);) {
            V *k = m.key, *va = m.val, *hint = m.hint;
            int nm, ck = member_key(c, key, k, wide, &nm);
            if (ck < 0)
                return -1;
            int tva = ptype(c, va);
            if (tva == T_DICT || tva == T_LIST) {
                if (!nonempty(c, tva, va))
                    continue;
                int fresh = shape_new(c, ck, tva, va, NULL);
                if (fresh < 0)
                    return -1;
                if (fresh) {
                    V *vb = a == b ? va : dict_get(c, b, k, hint);
                    if (push(c, nm, 0) < 0 || same(c, va, vb, ck, depth + 1) < 0)
                        return -1;
                    c->plen--;
                }
            } else if (a != b) {
                V *vb = dict_get(c, b, k, hint);
                int tvb = ptype(c, vb);
                if (tva != tvb && (tva == T_BOOL || tvb == T_BOOL)) {
                    if (push(c, nm, 0) < 0 || found_values(c, ck, K_TYPE, va, vb) < 0)
                        return -1;
                    c->plen--;
                }
            }
        }
        return 0;
    }
    int ck = star_of(key);
    if (ck < 0 || mark_field(c, ck) < 0)
        return -1;
    size_t n = unsafe_yyjson_get_len(a);
    V *x = unsafe_yyjson_get_first(a), *y = unsafe_yyjson_get_first(b), *px = NULL;
    for (size_t i = 0; i < n; i++, px = x, x = unsafe_yyjson_get_next(x), y = unsafe_yyjson_get_next(y)) {
        int tx = ptype(c, x), ty = ptype(c, y);
        if (tx == T_DICT || tx == T_LIST) {
            if (!nonempty(c, tx, x))
                continue;
            int fresh = shape_new(c, ck, tx, x, px);
            if (fresh < 0)
                return -1;
            if (fresh) {
                if (push(c, -1, (Py_ssize_t)i) < 0 || same(c, x, y, ck, depth + 1) < 0)
                    return -1;
                c->plen--;
            }
        } else if (tx != ty && (tx == T_BOOL || ty == T_BOOL)) {
            if (push(c, -1, (Py_ssize_t)i) < 0 || found_values(c, ck, K_TYPE, x, y) < 0)
                return -1;
            c->plen--;
        }
    }
    return 0;
}

/* an equal pair met in _diff_dicts / _diff_lists: visit it as an exemplar, or find true vs 1.
 * `px`: x's previous sibling in its array, or NULL. */
static int equal_pair(Ctx *c, V *x, V *y, int ck, int depth, V *px) {
    int tx = ptype(c, x), ty = ptype(c, y);
    if (tx == T_DICT || tx == T_LIST) {
        if (!nonempty(c, tx, x))
            return 0;
        int fresh = shape_new(c, ck, tx, x, px);
        if (fresh <= 0)
            return fresh;
        return same(c, x, y, ck, depth + 1);
    }
    if (tx != ty && (tx == T_BOOL || ty == T_BOOL))
        return found_values(c, ck, K_TYPE, x, y);
    return 0;
}

/* _diff_lists */
static int diff_lists(Ctx *c, V *a, V *b, int key, int depth) {
    size_t na = unsafe_yyjson_get_len(a), nb = unsafe_yyjson_get_len(b);
    if (na != nb && found_length(c, key, na, nb) < 0)
        return -1;
    if (!na && !nb)
        return 0;
    int ck = star_of(key);
    if (ck < 0 || mark_field(c, ck) < 0)
        return -1;
    size_t n = na < nb ? na : nb;
    V *x = unsafe_yyjson_get_first(a), *y = unsafe_yyjson_get_first(b), *px = NULL;
    for (size_t i = 0; i < n; i++, px = x, x = unsafe_yyjson_get_next(x), y = unsafe_yyjson_get_next(y)) {
        if (push(c, -1, (Py_ssize_t)i) < 0)
            return -1;
        int rc;
        if (eqbit(c, x, y))
            rc = equal_pair(c, x, y, ck, depth, px);
        else if (ptype(c, x) == T_DICT && ptype(c, y) == T_DICT && depth + 1 < c->max_depth)
            rc = diff_dicts(c, x, y, ck, depth + 1);
        else
            rc = diff_values(c, x, y, ck, depth + 1);
        if (rc < 0)
            return -1;
        c->plen--;
    }
    return 0;
}

/* The Nodes of the members of object a (no member removed) under `key`, counted as fields, at
 * Ctx.arena[*off...]: looked up for the first of a run of objects with the same names that
 * diff_dicts meets under one key (the differing records of an array), then kept for the
 * others, as _diff_list_of_dicts resolves them once per run of one key tuple. */
static int member_run(Ctx *c, int key, V *a, int wide, size_t *off) {
    Key *k = &g_keys[key];
    if (k->run_gen == c->gen && k->run_wide == wide && same_names(k->run, a)) {
        *off = k->run_off;
        return 0;
    }
    size_t n = unsafe_yyjson_get_len(a);
    if (arena_reserve(c, n) < 0)
        return -1;
    *off = c->arena_len;
    c->arena_len += n;
    V *name = unsafe_yyjson_get_first(a);
    for (size_t i = 0; i < n; i++, name = unsafe_yyjson_get_next(name + 1)) {
        int nm;
        if (member_key(c, key, name, wide, &nm) < 0)
            return -1;
        c->arena[*off + i] = nm;
    }
    k = &g_keys[key]; /* member_key can grow g_keys */
    k->run_gen = c->gen, k->run = a, k->run_off = *off, k->run_wide = wide;
    return 0;
}

/* _diff_dicts */
static int diff_dicts(Ctx *c, V *a, V *b, int key, int depth) {
    size_t nb = unsafe_yyjson_get_len(b), matched = 0, off = 0, i = 0;
    size_t len_b = dict_len(c, b);
    int wide = dict_len(c, a) > WIDE_OBJECT || len_b > WIDE_OBJECT;
    int run = !holey(c, a); /* every member of a is visited: its Nodes can be looked up once */
    if (run && member_run(c, key, a, wide, &off) < 0)
        return -1;
    for (Members m = members(c, a, b); next_member(c, &m); i++) {
        V *va = m.val;
        int nm, ck;
        if (run)
            nm = c->arena[off + i], ck = g_nodes[nm].key;
        else
            ck = member_key(c, key, m.key, wide, &nm);
        if (ck < 0 || push(c, nm, 0) < 0)
            return -1;
        V *vb = dict_get(c, b, m.key, m.hint);
        int rc;
        if (!vb) {
            rc = found_values(c, ck, K_MISSING, va, NULL);
        } else {
            matched++;
            int tva, tvb;
            if (eqbit(c, va, vb))
                rc = equal_pair(c, va, vb, ck, depth, NULL);
            else if ((tva = ptype(c, va)) == T_DICT && (tvb = ptype(c, vb)) == T_DICT && depth + 1 < c->max_depth)
                rc = diff_dicts(c, va, vb, ck, depth + 1);
            else if (g_keys[ck].diff_gen == c->gen && is_scalar(tva) && same_json_type(tva, ptype(c, vb)))
                rc = 0; /* a scalar change of value under a key already found: nothing to add */
            else
                rc = diff_values(c, va, vb, ck, depth + 1);
        }
        if (rc < 0)
            return -1;
        c->plen--;
    }
    if (matched != len_b) {
        V *k = unsafe_yyjson_get_first(b);
        for (size_t i = 0; i < nb; i++, k = unsafe_yyjson_get_next(k + 1)) {
            if (removed(c, k + 1) || dict_get(c, a, k, NULL))
                continue;
            int nm = child_of(c, key, k, wide);
            if (nm < 0 || push(c, nm, 0) < 0 || found_values(c, g_nodes[nm].key, K_EXTRA, NULL, k + 1) < 0)
                return -1;
            c->plen--;
        }
    }
    return 0;
}

/* _diff_values: a != b */
static int diff_values(Ctx *c, V *a, V *b, int key, int depth) {
    int ta = ptype(c, a), tb = ptype(c, b);
    if ((ta == T_DICT && tb == T_DICT) || (ta == T_LIST && tb == T_LIST)) {
        if (depth >= c->max_depth)
            return found_values(c, key, K_CHANGED, a, b);
        return ta == T_DICT ? diff_dicts(c, a, b, key, depth) : diff_lists(c, a, b, key, depth);
    }
    if (!same_json_type(ta, tb))
        return found_values(c, key, K_TYPE, a, b);
    if (!eqbit(c, a, b))
        return found_values(c, key, K_CHANGED, a, b);
    return 0;
}

/* _diff_json */
static int diff_json(Ctx *c, V *a, V *b) {
    if (mark_field(c, 0) < 0)
        return -1;
    if (eqbit(c, a, b)) {
        int ta = ptype(c, a), tb = ptype(c, b);
        if (ta == T_DICT || ta == T_LIST) {
            if (nonempty(c, ta, a))
                return same(c, a, b, 0, 0);
            return 0;
        }
        if (ta != tb && (ta == T_BOOL || tb == T_BOOL))
            return found_values(c, 0, K_TYPE, a, b);
        return 0;
    }
    return diff_values(c, a, b, 0, 0);
}

/* ---- what the Python walk handles instead ------------------------------------------------------ */

typedef struct {
    const char *s;
    size_t n;
} Name;

static int name_cmp(const void *x, const void *y) {
    const Name *a = x, *b = y;
    if (a->n != b->n)
        return a->n < b->n ? -1 : 1;
    return memcmp(a->s, b->s, a->n);
}

/* Whether an object's names may repeat: a 128-bit filter on (length, first and last byte);
 * 0 proves they do not, 1 asks for the exact check. */
static inline int seen_before(uint64_t seen[2], V *k) {
    size_t len = unsafe_yyjson_get_len(k);
    const unsigned char *s = (const unsigned char *)unsafe_yyjson_get_str(k);
    unsigned h = len ? (unsigned)(len * 31u + s[0] * 7u + s[len - 1]) : 0u;
    h = (h ^ (h >> 7)) & 127u;
    uint64_t bit = (uint64_t)1 << (h & 63u), had = seen[h >> 6] & bit;
    seen[h >> 6] |= bit;
    return had != 0;
}

static int maybe_repeated(V *k, size_t n) {
    uint64_t seen[2] = {0, 0};
    for (size_t i = 0; i < n; i++, k = unsafe_yyjson_get_next(k + 1))
        if (seen_before(seen, k))
            return 1;
    return 0;
}

/* 1: the object repeats a name (Python keeps the last value, at the first one's place);
 * 0: it does not; -1: error */
static int repeated_names(V *obj) {
    size_t n = unsafe_yyjson_get_len(obj);
    V *k = unsafe_yyjson_get_first(obj);
    if (n < 2 || !maybe_repeated(k, n))
        return 0;
    if (n <= 16) {
        V *p = k;
        for (size_t i = 0; i < n; i++, p = unsafe_yyjson_get_next(p + 1)) {
            V *q = unsafe_yyjson_get_next(p + 1);
            for (size_t j = i + 1; j < n; j++, q = unsafe_yyjson_get_next(q + 1))
                if (names_eq(q, p))
                    return 1;
        }
        return 0;
    }
    Name *names = malloc(n * sizeof(Name));
    if (!names) {
        PyErr_NoMemory();
        return -1;
    }
    V *p = k;
    for (size_t i = 0; i < n; i++, p = unsafe_yyjson_get_next(p + 1))
        names[i] = (Name){unsafe_yyjson_get_str(p), unsafe_yyjson_get_len(p)};
    qsort(names, n, sizeof(Name), name_cmp);
    int dup = 0;
    for (size_t i = 1; i < n && !dup; i++)
        dup = name_cmp(&names[i - 1], &names[i]) == 0;
    free(names);
    return dup;
}

/* 0: the document is one the C walk mirrors exactly; 1: leave it to Python; -1: error.
 * `checked`: an object already found free of repeated keys (the previous array element). */
static int check_doc(V *v, int depth, V *checked);

/* check_doc of a value inside a container at `depth`, without the call for a scalar */
static inline int check_inner(V *v, int depth, V *checked) {
    uint8_t t = unsafe_yyjson_get_type(v);
    if (depth < MAX_NEST && t != YYJSON_TYPE_ARR && t != YYJSON_TYPE_OBJ && t != YYJSON_TYPE_RAW)
        return 0;
    return check_doc(v, depth + 1, checked);
}

/* check_doc of an object; `names_ok`: its names are known not to repeat */
static int check_members(V *v, int depth, int names_ok) {
    if (depth > MAX_NEST)
        return 1;
    if (!names_ok) {
        int rc = repeated_names(v);
        if (rc)
            return rc < 0 ? -1 : 1;
    }
    size_t n = unsafe_yyjson_get_len(v);
    V *k = unsafe_yyjson_get_first(v);
    for (size_t i = 0; i < n; i++, k = unsafe_yyjson_get_next(k + 1)) {
        int rc = check_inner(k + 1, depth, NULL);
        if (rc)
            return rc;
    }
    return 0;
}

static int check_doc(V *v, int depth, V *checked) {
    if (depth > MAX_NEST)
        return 1;
    switch (unsafe_yyjson_get_type(v)) {
    case YYJSON_TYPE_RAW:
        return 1; /* a number beyond int64/uint64/double */
    case YYJSON_TYPE_ARR: {
        size_t n = unsafe_yyjson_get_len(v);
        V *x = unsafe_yyjson_get_first(v);
        V *prev = NULL;
        for (size_t i = 0; i < n; i++, x = unsafe_yyjson_get_next(x)) {
            int rc = check_inner(x, depth, prev);
            if (rc)
                return rc;
            prev = unsafe_yyjson_get_type(x) == YYJSON_TYPE_OBJ ? x : NULL;
        }
        return 0;
    }
    case YYJSON_TYPE_OBJ:
        return check_members(v, depth, checked && same_names(checked, v));
    default:
        return 0;
    }
}

/* check_doc of a live document built on a kept answer: its copies of the kept answer's values
 * were checked when it was kept (base_keep), at the same depth; the rest as check_doc checks. */
static int check_built(const Ctx *c, V *v, int depth) {
    if (c->src_a[v - c->base_a])
        return 0;
    if (depth > MAX_NEST || !unsafe_yyjson_is_ctn(v))
        return check_doc(v, depth, NULL);
    int obj = unsafe_yyjson_is_obj(v), rc = obj ? repeated_names(v) : 0;
    if (rc)
        return rc < 0 ? -1 : 1;
    size_t n = unsafe_yyjson_get_len(v);
    V *x = unsafe_yyjson_get_first(v); /* an element, or a member's name */
    for (size_t i = 0; i < n; i++, x = unsafe_yyjson_get_next(x + obj))
        if ((rc = check_built(c, x + obj, depth + 1)))
            return rc;
    return 0;
}

#define LEAVE 2 /* fuse: leave the bodies to Python */

static inline int checked_subtree(V *v, int depth) {
    int rc = check_doc(v, depth, NULL);
    return rc < 0 ? -1 : rc ? LEAVE : 0;
}

/* One pass over the two documents, pair by pair as the walk pairs them (object members by
 * name, array elements by index): checks what check_doc checks, on both, and records in
 * eq_a, for every value of the live document, whether it equals its counterpart. The walk
 * then reads those bits instead of comparing sub-trees again. 0 / 1: a == b; LEAVE; -1. */
static int fuse(Ctx *c, V *a, V *b, int depth);

/* fuse() for a pair of scalars with the same tag (type, subtype and length) and no ignore
 * marks, the bulk of any document, without the call: 0 / 1; -2: not such a pair. (Marks
 * on scalars: only M_IGNORED, on array elements; a removed member is never paired.) */
static inline int fuse_scalars(Ctx *c, V *a, V *b) {
    if (a->tag != b->tag || (c->any_ignored && ((mark_of(c, a) | mark_of(c, b)) & M_IGNORED)))
        return -2;
    int eq;
    switch (unsafe_yyjson_get_type(a)) {
    case YYJSON_TYPE_NUM:
        eq = a->uni.u64 == b->uni.u64 || num_eq(ptype(c, a), a, ptype(c, b), b);
        break;
    case YYJSON_TYPE_STR:
        eq = bytes_eq(a->uni.str, b->uni.str, unsafe_yyjson_get_len(a));
        break;
    case YYJSON_TYPE_BOOL:
    case YYJSON_TYPE_NULL:
        eq = 1; /* the subtype is the value */
        break;
    default:
        return -2;
    }
    c->eq_a[a - c->base_a] = (uint8_t)eq;
    return eq;
}

/* b is a's own text (built on the live text), or both copy one value of a kept answer:
 * equal, down to every value */
static inline int copied(const Ctx *c, V *a, V *b) {
    if (!c->src_b)
        return 0;
    uint32_t from = c->src_b[b - c->base_b];
    return c->src_a ? from && from == c->src_a[a - c->base_a] : from == (uint32_t)(a - c->base_a) + 1;
}

/* fuse() of a pair that is copied(): equal throughout (the ignore pass marked both alike, as
 * it goes by path); what check_doc checks, checked on a alone. `checked`: a's previous
 * sibling, an object already checked, or NULL; a with its names is marked SAME_PREV. */
static int fuse_copy(Ctx *c, V *a, int depth, V *checked) {
    if (c->kept_same) { /* a copy of a kept answer's value: checked whole when it was kept */
        size_t n = (size_t)(unsafe_yyjson_get_next(a) - a), at = (size_t)(a - c->base_a);
        memset(c->eq_a + at, EQ, n);
        if (checked && !c->masked) { /* its names known when the kept one's predecessor is `checked` */
            uint32_t q = c->src_a[at], p = c->src_a[checked - c->base_a];
            if (p + (uint32_t)(unsafe_yyjson_get_next(checked) - checked) == q && c->kept_same[q - 1])
                c->eq_a[at] |= SAME_PREV;
        }
        return 1;
    }
    int same = checked && unsafe_yyjson_get_type(a) == YYJSON_TYPE_OBJ && same_names(checked, a);
    int rc = same ? check_members(a, depth, 1) : check_doc(a, depth, NULL);
    if (rc)
        return rc < 0 ? -1 : LEAVE;
    memset(c->eq_a + (a - c->base_a), EQ, (size_t)(unsafe_yyjson_get_next(a) - a));
    if (same && !c->masked)
        c->eq_a[a - c->base_a] |= SAME_PREV;
    return 1;
}

static int fuse(Ctx *c, V *a, V *b, int depth) {
    if (copied(c, a, b))
        return fuse_copy(c, a, depth, NULL);
    if (depth > MAX_NEST || unsafe_yyjson_get_type(a) == YYJSON_TYPE_RAW ||
        unsafe_yyjson_get_type(b) == YYJSON_TYPE_RAW)
        return LEAVE;
    int ta = ptype(c, a), tb = ptype(c, b), eq, rc;
    if (ta == T_DICT && tb == T_DICT) {
        /* Repeated names in a: where a member was removed, looked for first (the loop skips
         * removed members); else filtered in the loop, which reads every name anyway. */
        int marked = holey(c, a) || holey(c, b), maybe = marked;
        uint64_t seen[2] = {0, 0};
        if (marked && (rc = repeated_names(a)))
            return rc < 0 ? -1 : LEAVE;
        /* b's names are a's, in a's order: then b repeats none either */
        int all = 1, aligned = !marked && unsafe_yyjson_get_len(a) == unsafe_yyjson_get_len(b);
        for (Members m = members(c, a, b); next_member(c, &m);) {
            V *vb;
            if (!maybe)
                maybe = seen_before(seen, m.key);
            if (m.hint && names_eq(m.hint, m.key)) {
                vb = removed(c, m.hint + 1) ? NULL : m.hint + 1; /* = dict_get(c, b, m.key, m.hint) */
            } else {
                aligned = 0;
                vb = dict_get(c, b, m.key, NULL);
            }
            if (!vb || (rc = fuse_scalars(c, m.val, vb)) == -2)
                rc = vb ? fuse(c, m.val, vb, depth + 1) : checked_subtree(m.val, depth + 1);
            if (rc < 0 || rc == LEAVE)
                return rc;
            all &= vb && rc;
        }
        if (!marked && maybe && (rc = repeated_names(a)))
            return rc < 0 ? -1 : LEAVE;
        /* The loop saw only the members kept: compare all names. (Paired objects share their
         * path, so the ignore pass removed the same names from both.) */
        if (marked)
            aligned = same_names(a, b);
        if (!aligned) {
            if ((rc = repeated_names(b)))
                return rc < 0 ? -1 : LEAVE;
            size_t nb = unsafe_yyjson_get_len(b);
            V *k = unsafe_yyjson_get_first(b);
            for (size_t i = 0; i < nb; i++, k = unsafe_yyjson_get_next(k + 1)) /* members only b has */
                if (!removed(c, k + 1) && !dict_get(c, a, k, NULL) && (rc = checked_subtree(k + 1, depth + 1)))
                    return rc;
        }
        eq = all && (aligned || dict_len(c, a) == dict_len(c, b));
    } else if (ta == T_LIST && tb == T_LIST) {
        size_t na = unsafe_yyjson_get_len(a), nb = unsafe_yyjson_get_len(b), n = na < nb ? na : nb;
        V *x = unsafe_yyjson_get_first(a), *y = unsafe_yyjson_get_first(b);
        V *prev = NULL; /* the previous element: copied, an object, checked */
        int all = 1;
        for (size_t i = 0; i < n; i++, x = unsafe_yyjson_get_next(x), y = unsafe_yyjson_get_next(y)) {
            if ((rc = fuse_scalars(c, x, y)) == -2) {
                /* A run of copied records (most of a large array that differs in a few) is
                 * checked as check_doc checks an array: an element with its predecessor's
                 * names needs no look for repeated ones. */
                int copy = copied(c, x, y);
                rc = copy ? fuse_copy(c, x, depth + 1, prev) : fuse(c, x, y, depth + 1);
                if (rc < 0 || rc == LEAVE)
                    return rc;
                prev = copy && unsafe_yyjson_get_type(x) == YYJSON_TYPE_OBJ ? x : NULL;
            } else {
                prev = NULL;
            }
            all &= rc;
        }
        for (size_t i = n; i < na; i++, x = unsafe_yyjson_get_next(x)) /* the longer one's tail */
            if ((rc = checked_subtree(x, depth + 1)))
                return rc;
        for (size_t i = n; i < nb; i++, y = unsafe_yyjson_get_next(y))
            if ((rc = checked_subtree(y, depth + 1)))
                return rc;
        eq = all && na == nb;
    } else {
        /* A container against something else is checked alone. An element the ignore pass
         * replaced (T_IGN) is never looked into, by Python either. */
        if ((ta == T_DICT || ta == T_LIST) && (rc = checked_subtree(a, depth)))
            return rc;
        if ((tb == T_DICT || tb == T_LIST) && (rc = checked_subtree(b, depth)))
            return rc;
        eq = scalar_eq(ta, a, tb, b);
    }
    c->eq_a[a - c->base_a] = (uint8_t)eq;
    return eq;
}

/* ---- ignore_fields: proxy.diffing._Node tries, applied as _strip applies them ------------------ */

static void trie_free(TNode *t) {
    if (!t)
        return;
    for (Py_ssize_t i = 0; i < t->nkeys; i++) {
        free(t->keys[i].name);
        trie_free(t->keys[i].child);
    }
    for (Py_ssize_t i = 0; i < t->nidx; i++)
        trie_free(t->idx[i].child);
    free(t->keys);
    free(t->idx);
    trie_free(t->any_key);
    trie_free(t->any_index);
    free(t);
}

static TNode *trie_from(PyObject *node);

static int trie_opt(PyObject *node, const char *attr, TNode **out) {
    PyObject *v = PyObject_GetAttrString(node, attr);
    if (!v)
        return -1;
    *out = NULL;
    if (v != Py_None && !(*out = trie_from(v))) {
        Py_DECREF(v);
        return -1;
    }
    Py_DECREF(v);
    return 0;
}

static TNode *trie_from(PyObject *node) {
    TNode *t = calloc(1, sizeof(TNode));
    PyObject *keys = NULL, *idx = NULL, *term = NULL;
    if (!t) {
        PyErr_NoMemory();
        return NULL;
    }
    if (!(keys = PyObject_GetAttrString(node, "keys")) || !PyDict_Check(keys) ||
        !(idx = PyObject_GetAttrString(node, "indexes")) || !PyDict_Check(idx) ||
        !(term = PyObject_GetAttrString(node, "terminal")))
        goto fail;
    t->terminal = PyObject_IsTrue(term);
    if (t->terminal < 0)
        goto fail;
    t->keys = calloc((size_t)PyDict_GET_SIZE(keys) + 1, sizeof(TKey));
    t->idx = calloc((size_t)PyDict_GET_SIZE(idx) + 1, sizeof(TIdx));
    if (!t->keys || !t->idx) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(keys, &pos, &k, &v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(k, &n);
        if (!s && PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            /* a name with a lone surrogate: no document the C walk takes has one (yyjson
             * refuses them; such bodies go to Python), so it matches nothing here. It raised,
             * and every comparison of the route was lost. */
            PyErr_Clear();
            continue;
        }
        if (!s)
            goto fail;
        TKey *tk = &t->keys[t->nkeys++];
        tk->name = malloc((size_t)n + 1);
        if (!tk->name) {
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(tk->name, s, (size_t)n);
        tk->len = (size_t)n;
        if (!(tk->child = trie_from(v)))
            goto fail;
    }
    pos = 0;
    while (PyDict_Next(idx, &pos, &k, &v)) {
        Py_ssize_t index = PyLong_AsSsize_t(k);
        if (index == -1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                goto fail;
            PyErr_Clear(); /* an index beyond any array: it matches nothing (it raised) */
            continue;
        }
        TIdx *ti = &t->idx[t->nidx++];
        ti->index = index;
        if (!(ti->child = trie_from(v)))
            goto fail;
    }
    if (trie_opt(node, "any_key", &t->any_key) < 0 || trie_opt(node, "any_index", &t->any_index) < 0)
        goto fail;
    Py_DECREF(keys);
    Py_DECREF(idx);
    Py_DECREF(term);
    return t;
fail:
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "ignore trie: unexpected node");
    Py_XDECREF(keys);
    Py_XDECREF(idx);
    Py_XDECREF(term);
    trie_free(t);
    return NULL;
}

static int hexdig(char ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* characters (code points) in UTF-8 text */
static size_t utf8_chars(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* proxy.diffing.is_id: digits, a UUID, >= 16 hex digits, or over MAX_KEY_NAME characters */
static int is_id(const char *s, size_t n) {
    if (!n)
        return 0;
    if (n > MAX_KEY_NAME && utf8_chars(s, n) > MAX_KEY_NAME)
        return 1;
    size_t digits = 0, hex = 0;
    for (size_t i = 0; i < n; i++) {
        digits += s[i] >= '0' && s[i] <= '9';
        hex += hexdig(s[i]);
    }
    if (digits == n || (hex == n && n >= 16))
        return 1;
    if (n != 36)
        return 0;
    for (size_t i = 0; i < n; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !hexdig(s[i]))
            return 0;
    }
    return 1;
}

/* The end of _step_key / _step_index, given a state's candidate children: 1 if one is
 * terminal (the value is ignored), else 0 with the others added to nxt; -1: more than
 * MAX_STATES states. */
static int step(TNode *const *cand, int ncand, TNode **nxt, int *nn) {
    for (int q = 0; q < ncand; q++) {
        if (!cand[q])
            continue;
        if (cand[q]->terminal)
            return 1;
        if (*nn == MAX_STATES)
            return -1;
        nxt[(*nn)++] = cand[q];
    }
    return 0;
}

/* _strip over a yyjson document: marks instead of deletions. 0 ok, 1 leave to Python */
static int strip(V *v, TNode **states, int ns, V *base, uint8_t *mask, int *any_ignored) {
    int t = unsafe_yyjson_get_type(v);
    TNode *nxt[MAX_STATES];
    if (t == YYJSON_TYPE_OBJ) {
        size_t n = unsafe_yyjson_get_len(v);
        V *k = unsafe_yyjson_get_first(v);
        for (size_t i = 0; i < n; i++, k = unsafe_yyjson_get_next(k + 1)) { /* _step_key */
            const char *s = unsafe_yyjson_get_str(k);
            size_t len = unsafe_yyjson_get_len(k);
            int nn = 0, hit = 0;
            for (int j = 0; j < ns && !hit; j++) {
                TNode *cand[2] = {NULL, states[j]->any_key};
                for (Py_ssize_t q = 0; q < states[j]->nkeys; q++)
                    if (states[j]->keys[q].len == len && memcmp(states[j]->keys[q].name, s, len) == 0)
                        cand[0] = states[j]->keys[q].child;
                if ((hit = step(cand, 2, nxt, &nn)) < 0)
                    return 1;
            }
            if (hit) {
                mask[(k + 1) - base] |= M_REMOVED;
                mask[v - base] |= M_HOLEY;
            } else if (nn && strip(k + 1, nxt, nn, base, mask, any_ignored)) {
                return 1;
            }
        }
    } else if (t == YYJSON_TYPE_ARR) {
        size_t n = unsafe_yyjson_get_len(v);
        V *x = unsafe_yyjson_get_first(v);
        for (size_t i = 0; i < n; i++, x = unsafe_yyjson_get_next(x)) { /* _step_index */
            int nn = 0, hit = 0;
            for (int j = 0; j < ns && !hit; j++) {
                TNode *cand[2] = {NULL, states[j]->any_index};
                for (Py_ssize_t q = 0; q < states[j]->nidx; q++)
                    if (states[j]->idx[q].index == (Py_ssize_t)i)
                        cand[0] = states[j]->idx[q].child;
                if ((hit = step(cand, 2, nxt, &nn)) < 0)
                    return 1;
            }
            if (hit) {
                mask[x - base] |= M_IGNORED;
                *any_ignored = 1;
            } else if (nn && strip(x, nxt, nn, base, mask, any_ignored)) {
                return 1;
            }
        }
    }
    return 0;
}

/* ---- the shadow document, built on the live one's text ---------------------------------------
 * Two answers to one request mostly share their text: the same records, a few values apart.
 * Parsing the shadow's whole text again costs as much as the live one (~half of a diff), so
 * the shadow document is built instead by following the live document over both texts: a
 * live value whose text the shadow repeats at the same place is copied (its parsed values,
 * and a note in src_b that fuse reads as "equal, checked on the live side"); a container
 * whose text differs is followed member by member, element by element; anything else (a
 * value that differs, members that do not line up) is parsed from the shadow's text by
 * yyjson, one value at a time. The result is the document yyjson would have made of the
 * shadow's whole text: every byte of it is either the live text at the same grammatical
 * place (valid there, so valid here, and the same values), or parsed by yyjson, or a
 * separator checked here. A container whose members mostly differ is parsed whole; where
 * the parsing adds up to more than half the shadow's text, the shadow is parsed whole. */

#define AL_OK 0
#define AL_NOT_JSON 1 /* the shadow's text is not one JSON value: yyjson would refuse it too */
#define AL_GIVE_UP 2  /* parse the shadow whole instead */
#define AL_RESTART 3  /* this container's text does not follow the live one's: parse it whole */
#define AL_ERR (-1)
#define NO_POS ((size_t)-1)
/* a value parsed on its own costs about this many bytes of text more than its length */
#define PIECE_COST 64
/* Containers shorter than this whose text differs are parsed whole (cheaper than following
 * their members); so is one where at least LINE_UP_MIN members or elements have been followed
 * and most of them differed: its texts do not line up well enough to gain. */
#define DESCEND_MIN 128
#define ALIGN_MIN 4096 /* shorter shadow texts are parsed whole: following them gains nothing */
#define LINE_UP_MIN 16

/* after the members or elements `seen` so far, `copied` of them copies of the live text */
static inline int lines_up(size_t seen, size_t copied) { return seen < LINE_UP_MIN || copied * 2 >= seen; }

typedef struct {
    const char *ta, *tb; /* live and shadow texts */
    size_t na, nb;
    const char *pool_a; /* yyjson's copy of the live text: string offsets */
    V *base_a;
    const yyjson_alc *alc;
    V *out; /* the shadow document's values */
    uint32_t *src;
    size_t n_out, cap_out;
    yyjson_doc **pieces; /* values parsed from the shadow text: kept until the walk ends */
    size_t n_pieces, cap_pieces;
    size_t spent, budget; /* bytes parsed or scanned, and where a whole parse is cheaper */
    Py_ssize_t descend_min;
    /* A stretch both texts repeat: ta[same_a..same_to) is tb[same_b...] (common_prefix). It
     * holds at any later ta[ia] in it whose tb[ib] is as far from same_b: one scan serves every
     * array inside it, and another starts only past where the last one stopped, or where a
     * shift moved the texts apart inside the value the last one stopped in: all the scans of a
     * build read each byte about once (a scan for each element of an array cost O(n^2)). */
    size_t same_a, same_b, same_to;
} Align;

/* ta[ia..al->same_to) is tb[ib...]: the stretch holds there (and is not empty) */
static inline int in_stretch(const Align *al, size_t ia, size_t ib) {
    return ia >= al->same_a && ia < al->same_to && ib - ia == al->same_b - al->same_a;
}

static inline int is_ws(char ch) { return ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t'; }
static inline int is_delim(char ch) { return is_ws(ch) || ch == ',' || ch == ']' || ch == '}'; }

static inline size_t skip_ws(const char *t, size_t n, size_t i) {
    while (i < n && is_ws(t[i]))
        i++;
    return i;
}

/* after the closing quote of the string whose opening quote is at t[i]; 0: unterminated */
static size_t str_end(const char *t, size_t n, size_t i) {
    for (size_t j = i + 1; j < n; j++) {
        if (t[j] == '\\')
            j++;
        else if (t[j] == '"')
            return j + 1;
    }
    return 0;
}

/* a number or literal: up to the next delimiter */
static inline size_t scalar_end(const char *t, size_t n, size_t i) {
    while (i < n && !is_delim(t[i]))
        i++;
    return i;
}

/* Where a live string's text begins (its opening quote) and ends (after its closing one).
 * yyjson unescapes in its copy of the text, in place: the string starts where it did. */
static inline size_t a_str_start(const Align *al, V *s) {
    return (size_t)(unsafe_yyjson_get_str(s) - al->pool_a) - 1;
}

static size_t a_str_end(const Align *al, V *s) {
    size_t off = a_str_start(al, s) + 1, len = unsafe_yyjson_get_len(s);
    /* Unescaping never lengthens: the text runs at least len bytes, and a quote right there
     * that no backslash precedes is the closing one. */
    if (off + len < al->na && al->ta[off + len] == '"' && (len == 0 || al->ta[off + len - 1] != '\\'))
        return off + len + 1;
    return str_end(al->ta, al->na, off - 1);
}

/* where a live value's text begins, when its own parsed values tell (a string, an object
 * with members); NO_POS when only the text before it does */
static size_t a_start(const Align *al, V *v) {
    if (unsafe_yyjson_is_str(v))
        return a_str_start(al, v);
    if (unsafe_yyjson_is_obj(v) && unsafe_yyjson_get_len(v)) {
        size_t i = a_str_start(al, unsafe_yyjson_get_first(v));
        while (i && is_ws(al->ta[i - 1]))
            i--;
        return i && al->ta[i - 1] == '{' ? i - 1 : NO_POS;
    }
    return NO_POS;
}

/* where the value after a member's key begins: the key's end, ws, ':', ws */
static inline size_t a_value_start(const Align *al, V *key) {
    size_t i = skip_ws(al->ta, al->na, a_str_end(al, key));
    return skip_ws(al->ta, al->na, i + 1);
}

/* after the text of the live value v that begins at ta[start] (NO_POS: not found) */
static size_t a_end(Align *al, V *v, size_t start) {
    const char *t = al->ta;
    size_t n = al->na;
    switch (unsafe_yyjson_get_type(v)) {
    case YYJSON_TYPE_STR:
        return a_str_end(al, v);
    case YYJSON_TYPE_OBJ:
    case YYJSON_TYPE_ARR: {
        size_t len = unsafe_yyjson_get_len(v), i;
        V *last = unsafe_yyjson_get_first(v);
        if (!len) {
            i = skip_ws(t, n, start + 1);
        } else if (unsafe_yyjson_is_obj(v)) { /* the last member's value */
            for (size_t k = 1; k < len; k++)
                last = unsafe_yyjson_get_next(last + 1);
            i = a_end(al, last + 1, a_value_start(al, last));
        } else { /* the last element: where it tells its start, else every element in turn */
            for (size_t k = 1; k < len; k++)
                last = unsafe_yyjson_get_next(last);
            size_t s = a_start(al, last);
            if (s == NO_POS) {
                V *x = unsafe_yyjson_get_first(v);
                s = skip_ws(t, n, start + 1);
                for (size_t k = 1; k < len && s != NO_POS; k++, x = unsafe_yyjson_get_next(x)) {
                    size_t e = a_end(al, x, s);
                    s = e == NO_POS ? NO_POS : skip_ws(t, n, skip_ws(t, n, e) + 1);
                }
                al->spent += s == NO_POS ? 0 : s - start;
            }
            i = s == NO_POS ? NO_POS : a_end(al, last, s);
        }
        if (i == NO_POS || (i = skip_ws(t, n, i)) >= n)
            return NO_POS;
        return i + 1; /* ']' or '}' */
    }
    case YYJSON_TYPE_NULL:
    case YYJSON_TYPE_BOOL:
    case YYJSON_TYPE_NUM:
    case YYJSON_TYPE_RAW:
        return scalar_end(t, n, start);
    default:
        return NO_POS;
    }
}

/* Where the live value whose text begins at ta[from] ends, told by what follows it: the next
 * member's or element's text at ta[next] with whitespace, `sep` and whitespace between
 * (sep 0: only whitespace, before the closing bracket at ta[next]). Valid text (yyjson parsed
 * it) has nothing else there; NO_POS when that is not what is found. O(1), where a_end goes
 * through a container's members to its last one. */
static size_t end_before(const Align *al, size_t from, size_t next, char sep) {
    size_t i = next;
    while (i > from && is_ws(al->ta[i - 1]))
        i--;
    if (sep) {
        if (i <= from || al->ta[i - 1] != sep)
            return NO_POS;
        for (i--; i > from && is_ws(al->ta[i - 1]);)
            i--;
    }
    return i > from ? i : NO_POS;
}

/* after the text of the shadow value that begins at tb[i], as far as brackets and quotes
 * tell; 0: none. yyjson checks the rest when it parses that text. */
static size_t b_end(const char *t, size_t n, size_t i) {
    if (i >= n)
        return 0;
    if (t[i] == '"')
        return str_end(t, n, i);
    if (t[i] != '{' && t[i] != '[') {
        size_t e = scalar_end(t, n, i);
        return e > i ? e : 0;
    }
    size_t depth = 0;
    for (size_t j = i; j < n; j++) {
        char ch = t[j];
        if (ch == '"') {
            if (!(j = str_end(t, n, j)))
                return 0;
            j--;
        } else if (ch == '{' || ch == '[') {
            depth++;
        } else if ((ch == '}' || ch == ']') && --depth == 0) {
            return j + 1;
        }
    }
    return 0;
}

/* how many bytes a[0..n) and b[0..n) have in common from the start */
static size_t common_prefix(const char *a, const char *b, size_t n) {
    size_t i = 0;
    while (i + 512 <= n && !memcmp(a + i, b + i, 512)) /* libc's memcmp: the widest compare there is */
        i += 512;
    /* then the block with the difference, 8 bytes, then 1 at a time */
    for (; i + 8 <= n; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            break;
    }
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

/* bytes of text read to find and follow stretches (find_stretch, next_in_stretch), since the
 * module was loaded: scanned() */
static unsigned long long g_n_scanned;

/* the stretch both texts repeat from ta[ia] and tb[ib] on, as far as they agree */
static void find_stretch(Align *al, size_t ia, size_t ib) {
    size_t room = al->na - ia < al->nb - ib ? al->na - ia : al->nb - ib;
    size_t same = common_prefix(al->ta + ia, al->tb + ib, room);
    al->same_a = ia, al->same_b = ib, al->same_to = ia + same;
    g_n_scanned += same;
}

static int out_reserve(Align *al, size_t more) {
    if (al->n_out + more <= al->cap_out)
        return 0;
    size_t cap = al->cap_out * 2 > al->n_out + more ? al->cap_out * 2 : al->n_out + more + 64;
    V *out = realloc(al->out, cap * sizeof(V));
    if (!out)
        return PyErr_NoMemory(), -1;
    al->out = out;
    uint32_t *src = realloc(al->src, cap * sizeof(uint32_t));
    if (!src)
        return PyErr_NoMemory(), -1;
    al->src = src;
    al->cap_out = cap;
    return 0;
}

/* src of n values put at `at` that copy the live values from `from` on (1 + an index; 0: put
 * without one): each value of a copy names its own source, so a value deep inside a copied
 * sub-tree is known as a copy too (fuse pairs it with a copy of the same value) */
static inline void src_put(Align *al, size_t at, size_t n, uint32_t from) {
    uint32_t *s = al->src + at;
    if (!from) {
        memset(s, 0, n * sizeof(uint32_t));
        return;
    }
    for (size_t i = 0; i < n; i++)
        s[i] = from + (uint32_t)i;
}

/* append n values that copy live value `from` and its followers (0: none) */
static int out_put(Align *al, V *v, size_t n, uint32_t from) {
    if (out_reserve(al, n) < 0)
        return AL_ERR;
    memcpy(al->out + al->n_out, v, n * sizeof(V));
    src_put(al, al->n_out, n, from);
    al->n_out += n;
    return AL_OK;
}

/* parse the shadow value at tb[sb] on its own */
static int piece(Align *al, size_t sb, size_t *eb) {
    size_t e = b_end(al->tb, al->nb, sb);
    if (!e)
        return AL_NOT_JSON;
    al->spent += e - sb + PIECE_COST;
    if (al->n_pieces == al->cap_pieces) {
        size_t cap = al->cap_pieces ? al->cap_pieces * 2 : 16;
        yyjson_doc **grown = realloc(al->pieces, cap * sizeof(yyjson_doc *));
        if (!grown)
            return PyErr_NoMemory(), AL_ERR;
        al->pieces = grown;
        al->cap_pieces = cap;
    }
    yyjson_read_err err;
    yyjson_doc *d = yyjson_read_opts((char *)al->tb + sb, e - sb, READ_FLAGS, al->alc, &err);
    if (!d)
        return err.code == YYJSON_READ_ERROR_MEMORY_ALLOCATION ? AL_GIVE_UP : AL_NOT_JSON;
    al->pieces[al->n_pieces++] = d;
    *eb = e;
    return out_put(al, yyjson_doc_get_root(d), yyjson_doc_get_val_count(d), 0);
}

static int align_value(Align *al, V *a, size_t sa, size_t sb, int depth, size_t *ea, size_t *eb, size_t end);

/* the members of live object a (text from ta[sa] to ta[end]) against the shadow object at tb[sb] */
static int align_object(Align *al, V *a, size_t sa, size_t sb, int depth, size_t *eb, size_t end) {
    size_t n = unsafe_yyjson_get_len(a), ib = sb + 1, h = al->n_out;
    int rc;
    if ((rc = out_put(al, a, 1, 0)))
        return rc;
    V *k = unsafe_yyjson_get_first(a);
    size_t copied = 0;
    for (size_t i = 0; i < n; i++, k = unsafe_yyjson_get_next(k + 1)) {
        if (!lines_up(i, copied))
            return AL_RESTART;
        ib = skip_ws(al->tb, al->nb, ib);
        if (i) {
            if (ib >= al->nb || al->tb[ib] != ',')
                return AL_RESTART;
            ib = skip_ws(al->tb, al->nb, ib + 1);
        }
        size_t ks = a_str_start(al, k), ke = a_str_end(al, k), ea;
        if (!ke)
            return AL_GIVE_UP;
        if (ib + (ke - ks) > al->nb || memcmp(al->ta + ks, al->tb + ib, ke - ks))
            return AL_RESTART; /* another name here: the members do not line up */
        ib = skip_ws(al->tb, al->nb, ib + (ke - ks));
        if (ib >= al->nb || al->tb[ib] != ':')
            return AL_RESTART;
        ib = skip_ws(al->tb, al->nb, ib + 1);
        if ((rc = out_put(al, k, 1, 0)))
            return rc;
        size_t at = al->n_out, vs = a_value_start(al, k);
        size_t ve = i + 1 < n ? end_before(al, vs, a_str_start(al, unsafe_yyjson_get_next(k + 1)), ',')
                              : al->ta[end - 1] == '}' ? end_before(al, vs, end - 1, 0) : NO_POS;
        if ((rc = align_value(al, k + 1, vs, ib, depth + 1, &ea, &ib, ve)))
            return rc;
        copied += al->src[at] != 0;
    }
    ib = skip_ws(al->tb, al->nb, ib);
    if (ib >= al->nb || al->tb[ib] != '}')
        return AL_RESTART; /* more members, or not JSON: parsed whole, yyjson tells */
    al->out[h].uni.ofs = (al->n_out - h) * sizeof(V);
    *eb = ib + 1;
    return AL_OK;
}

/* put the run of live elements [x0, x) whose texts the shadow repeats: copies, as out_put
 * copies one, with one copy of their values (a run's values follow one another) */
static int put_run(Align *al, V *x0, V *x) {
    size_t n = (size_t)(x - x0), at = al->n_out;
    if (!n)
        return AL_OK;
    if (out_reserve(al, n) < 0)
        return AL_ERR;
    memcpy(al->out + at, x0, n * sizeof(V));
    src_put(al, at, n, (uint32_t)(x0 - al->base_a) + 1);
    al->n_out += n;
    return AL_OK;
}

/* Records inserted or removed before others (a feed, newest first) shift the rest by position.
 * Where live element x (text ta[ia..end)) is not at tb[ib], SHIFT_MAX elements either way are
 * looked at: the shadow's next ones for x's text (the shadow inserted some), x's followers for
 * the shadow's text at tb[ib] (it removed some). Only for records whose first SHIFT_PREFIX bytes
 * differ (a record changed in place keeps its start), and after SHIFT_TRIES looks that found
 * nothing in an array, no more there. */
#define SHIFT_MAX 8
#define SHIFT_PREFIX 16
#define SHIFT_TRIES 2

/* Where the text of live element x, the i-th of n in an array whose text ends at ta[end_a],
 * ends when it begins at ta[start]: from where the next element's begins when that tells
 * (records, strings), the text between being whitespace, a comma, whitespace (yyjson parsed
 * it); before the ']' for the last one. NO_POS: not told. Cheaper than a_end, which goes
 * through x's members to the last one. */
static size_t elem_end(const Align *al, V *x, size_t i, size_t n, size_t start, size_t end_a) {
    if (i + 1 == n)
        return al->ta[end_a - 1] == ']' ? end_before(al, start, end_a - 1, 0) : NO_POS;
    size_t next = a_start(al, unsafe_yyjson_get_next(x));
    return next == NO_POS ? NO_POS : end_before(al, start, next, ',');
}

/* ta[ia..ia+len) at tb[ib], followed by what may follow a value */
static inline int text_at(const Align *al, size_t ia, size_t len, size_t ib) {
    return ib + len <= al->nb && !memcmp(al->ta + ia, al->tb + ib, len) &&
           (ib + len == al->nb || is_delim(al->tb[ib + len]));
}

/* how many shadow elements from tb[ib] on come before one whose text is ta[ia..end) (1 to
 * SHIFT_MAX; 0: none), and where that one starts (*at) */
static size_t inserted(Align *al, size_t ia, size_t end, size_t ib, size_t *at) {
    for (size_t j = 1; j <= SHIFT_MAX; j++) {
        size_t e = b_end(al->tb, al->nb, ib);
        if (!e)
            return 0;
        al->spent += e - ib;
        e = skip_ws(al->tb, al->nb, e);
        if (e >= al->nb || al->tb[e] != ',')
            return 0;
        ib = skip_ws(al->tb, al->nb, e + 1);
        if (text_at(al, ia, end - ia, ib)) {
            *at = ib;
            return j;
        }
    }
    return 0;
}

/* how many live elements after x (the i-th of n, its text ending at ta[end]) come before one
 * whose text is at tb[ib] (1 to SHIFT_MAX; 0: none), and where that one starts (*at) */
static size_t removed_before(const Align *al, V *x, size_t i, size_t n, size_t end, size_t end_a, size_t ib,
                             size_t *at) {
    for (size_t k = 1; k <= SHIFT_MAX && i + k < n; k++) {
        x = unsafe_yyjson_get_next(x);
        size_t s = skip_ws(al->ta, al->na, skip_ws(al->ta, al->na, end) + 1); /* past the ',' */
        if ((end = elem_end(al, x, i + k, n, s, end_a)) == NO_POS)
            return 0;
        if (text_at(al, s, end - s, ib)) {
            *at = s;
            return k;
        }
    }
    return 0;
}

/* Where the element after live element x begins, x's text beginning at ta[ia] inside the
 * stretch (in_stretch): from the next element's own start when that tells (a string, a record);
 * else from x's end found in the text, read no further than the stretch (a number or literal
 * to its delimiter, a string by its value, a container by its brackets; one that runs past the
 * stretch is followed by align_value, and the bytes read for it are charged). NO_POS: not told. */
static size_t next_in_stretch(Align *al, V *x, size_t ia) {
    size_t next = a_start(al, unsafe_yyjson_get_next(x)), e;
    if (next != NO_POS)
        return next;
    if (unsafe_yyjson_is_str(x)) {
        e = a_str_end(al, x);
    } else if (unsafe_yyjson_is_ctn(x)) {
        e = b_end(al->ta, al->same_to, ia);
        g_n_scanned += (e ? e : al->same_to) - ia;
        if (!e) {
            al->spent += al->same_to - ia;
            return NO_POS;
        }
    } else {
        e = scalar_end(al->ta, al->same_to, ia);
    }
    e = skip_ws(al->ta, al->same_to, e);
    if (e >= al->same_to || al->ta[e] != ',')
        return NO_POS; /* the comma after x is not in the stretch (nor, for a number, its end) */
    return skip_ws(al->ta, al->na, e + 1);
}

/* the elements of live array a (text from ta[sa] to ta[end_a]) against the shadow array at tb[sb] */
static int align_array(Align *al, V *a, size_t sa, size_t sb, int depth, size_t *eb, size_t end_a) {
    size_t n = unsafe_yyjson_get_len(a), ib = sb + 1, ia = skip_ws(al->ta, al->na, sa + 1), h = al->n_out, count = 0;
    int rc;
    if ((rc = out_put(al, a, 1, 0)))
        return rc;
    V *x = unsafe_yyjson_get_first(a), *run = x; /* [run, x): elements copied, not put yet */
    size_t copied = 0;
    /* A stretch of text both repeat (al->same_to), found at an element's start after a copied
     * element, or by an array around this one. The elements that end in it with the comma
     * after them (the bulk of a long array that differs in a few) are copies, told by where the
     * next one starts: no look at their own ends or separators. */
    size_t i = 0, tries = 0; /* i: live elements passed; count: shadow elements put */
    int at_start = 0, last_copied = 1; /* ia, ib at an element's start already; x's predecessor copied */
    while (i < n) {
        if (!lines_up(count, copied))
            return AL_RESTART;
        if (!at_start) {
            ib = skip_ws(al->tb, al->nb, ib);
            if (ib < al->nb && al->tb[ib] == ']')
                break; /* the shadow's array is shorter */
            if (count) {
                if (ib >= al->nb || al->tb[ib] != ',')
                    return AL_RESTART;
                ib = skip_ws(al->tb, al->nb, ib + 1);
                ia = skip_ws(al->ta, al->na, skip_ws(al->ta, al->na, ia) + 1); /* past the live ',' */
            }
        }
        at_start = 0;
        if (i + 1 < n && depth < MAX_NEST && al->spent <= al->budget) {
            int in = in_stretch(al, ia, ib);
            if (!in && last_copied)
                find_stretch(al, ia, ib), in = ia < al->same_to;
            size_t next = in ? next_in_stretch(al, x, ia) : NO_POS;
            if (next != NO_POS && next <= al->same_to && next > ia) {
                /* x, whitespace, the comma, whitespace: the same bytes in both texts (the
                 * shadow's may have more whitespace before its next element) */
                ib = skip_ws(al->tb, al->nb, ib + (next - ia)), ia = next;
                copied++;
                at_start = last_copied = 1;
                i++, count++, x = unsafe_yyjson_get_next(x);
                continue;
            }
        }
        size_t end = elem_end(al, x, i, n, ia, end_a);
        if (end != NO_POS && end > ia && depth < MAX_NEST && al->spent <= al->budget) {
            /* align_value's copy, for the run of elements the shadow repeats */
            size_t len = end - ia;
            uint8_t type = unsafe_yyjson_get_type(x);
            int scalar = type != YYJSON_TYPE_STR && type != YYJSON_TYPE_ARR && type != YYJSON_TYPE_OBJ;
            if (ib + len <= al->nb && !memcmp(al->ta + ia, al->tb + ib, len) &&
                !(scalar && ib + len < al->nb && !is_delim(al->tb[ib + len]))) {
                ia = end, ib += len;
                copied++;
                last_copied = 1;
                i++, count++, x = unsafe_yyjson_get_next(x);
                continue;
            }
            size_t j, k, at, start = len < SHIFT_PREFIX ? len : SHIFT_PREFIX;
            if ((type == YYJSON_TYPE_OBJ || type == YYJSON_TYPE_ARR) && tries < SHIFT_TRIES &&
                ib + start <= al->nb && (al->tb[ib] == '{' || al->tb[ib] == '[') &&
                common_prefix(al->ta + ia, al->tb + ib, start) < start) {
                if ((j = inserted(al, ia, end, ib, &at))) { /* the shadow's j elements first, then x */
                    if ((rc = put_run(al, run, x)))
                        return rc;
                    for (size_t q = 0; q < j; q++, count++) {
                        if (q) /* the comma after the one before */
                            ib = skip_ws(al->tb, al->nb, skip_ws(al->tb, al->nb, ib) + 1);
                        if ((rc = piece(al, ib, &ib)))
                            return rc;
                    }
                    ib = at, run = x, at_start = last_copied = 1;
                    continue; /* x again, now at tb[ib] */
                }
                if ((k = removed_before(al, x, i, n, end, end_a, ib, &at))) { /* x and k - 1 after it: gone */
                    if ((rc = put_run(al, run, x)))
                        return rc;
                    for (size_t q = 0; q < k; q++)
                        x = unsafe_yyjson_get_next(x);
                    i += k, ia = at, run = x, at_start = last_copied = 1;
                    continue; /* the element at ta[ia] against tb[ib] */
                }
                tries++;
            }
        }
        if ((rc = put_run(al, run, x)))
            return rc;
        size_t at = al->n_out;
        if ((rc = align_value(al, x, ia, ib, depth + 1, &ia, &ib, end)))
            return rc;
        last_copied = al->src[at] != 0;
        copied += (size_t)last_copied;
        run = unsafe_yyjson_get_next(x);
        i++, count++, x = run;
    }
    if ((rc = put_run(al, run, x)))
        return rc;
    for (;; count++) { /* the shadow's array is longer: its other elements */
        ib = skip_ws(al->tb, al->nb, ib);
        if (ib < al->nb && al->tb[ib] == ']')
            break;
        if (count) { /* a comma after the elements before; none before the first */
            if (ib >= al->nb || al->tb[ib] != ',')
                return AL_RESTART;
            ib = skip_ws(al->tb, al->nb, ib + 1);
        }
        if ((rc = piece(al, ib, &ib)))
            return rc;
    }
    al->out[h].tag = ((uint64_t)count << YYJSON_TAG_BIT) | (a->tag & YYJSON_TAG_MASK);
    al->out[h].uni.ofs = (al->n_out - h) * sizeof(V);
    *eb = ib + 1;
    return AL_OK;
}

/* the live value a, whose text is ta[sa..*ea), against the shadow text at tb[sb]; `end`: where
 * a's text ends when the caller knows, else NO_POS */
static int align_value(Align *al, V *a, size_t sa, size_t sb, int depth, size_t *ea, size_t *eb, size_t end) {
    if (al->spent > al->budget || depth > MAX_NEST)
        return AL_GIVE_UP;
    if (end == NO_POS)
        end = a_end(al, a, sa);
    if (end == NO_POS || end <= sa)
        return AL_GIVE_UP;
    *ea = end;
    size_t len = end - sa;
    int type = unsafe_yyjson_get_type(a);
    int scalar = type != YYJSON_TYPE_STR && type != YYJSON_TYPE_ARR && type != YYJSON_TYPE_OBJ;
    if (sb + len <= al->nb && !memcmp(al->ta + sa, al->tb + sb, len) &&
        !(scalar && sb + len < al->nb && !is_delim(al->tb[sb + len]))) {
        *eb = sb + len;
        return out_put(al, a, (size_t)(unsafe_yyjson_get_next(a) - a), (uint32_t)(a - al->base_a) + 1);
    }
    if ((Py_ssize_t)len >= al->descend_min && sb < al->nb &&
        ((type == YYJSON_TYPE_OBJ && al->tb[sb] == '{') || (type == YYJSON_TYPE_ARR && al->tb[sb] == '['))) {
        size_t mark = al->n_out;
        int rc = type == YYJSON_TYPE_OBJ ? align_object(al, a, sa, sb, depth, eb, end)
                                         : align_array(al, a, sa, sb, depth, eb, end);
        if (rc != AL_RESTART)
            return rc;
        al->n_out = mark; /* what was put for it goes: the whole text is parsed instead */
        if (al->spent + len > al->budget)
            return AL_GIVE_UP; /* most of the shadow, by the live text's length: parse it all */
    }
    return piece(al, sb, eb);
}

/* The shadow document, built on the live one (see above): AL_OK with al->out[0..n_out). */
static int align_doc(Align *al, V *root) {
    size_t sa = skip_ws(al->ta, al->na, 0), sb = skip_ws(al->tb, al->nb, 0), ea, eb, end = al->na;
    if (sb >= al->nb)
        return AL_NOT_JSON;
    while (end > sa && is_ws(al->ta[end - 1])) /* yyjson parsed the text: only whitespace after */
        end--;
    int rc = align_value(al, root, sa, sb, 0, &ea, &eb, end > sa ? end : NO_POS);
    if (!rc && skip_ws(al->tb, al->nb, eb) != al->nb)
        rc = AL_NOT_JSON; /* something after the value */
    return rc;
}

static void align_free(Align *al) {
    for (size_t i = 0; i < al->n_pieces; i++)
        yyjson_doc_free(al->pieces[i]);
    free(al->pieces);
    al->pieces = NULL;
    al->n_pieces = al->cap_pieces = 0;
}

/* ---- kept answers ------------------------------------------------------------------------------
 * The answers of one endpoint mostly share their text from one request to the next (the same
 * records; a timestamp, an id, a few values apart), yet each call parses the live one whole:
 * about half of a diff. Given a `reuse` key (proxy.shadow passes route and endpoint), diff()
 * keeps the live answer's parse under it, and the next call with that key builds both of its
 * documents on the kept answer's text, as align_doc builds the shadow's on the live one's:
 * neither body is parsed whole. fuse reads two copies of one kept value as an equal pair,
 * checked as a copied pair is (fuse_copy). A live answer that does not line up with the kept
 * one is parsed whole, as without a key, and kept in its place; after two such answers in a
 * row the key is left alone for BASE_SKIP calls (answers that never line up pay one failed
 * build, at most half a parse, in BASE_SKIP + 2 calls). At most MAX_BASES answers of at
 * most BASE_MAX_BODY bytes and BASES_BYTES in all are kept; the least recently used goes. */
#define MAX_BASES 64
#define BASE_MAX_BODY ((Py_ssize_t)1 << 20)
#define BASES_BYTES ((size_t)64 << 20)
#define BASE_SKIP 32

typedef struct {
    PyObject *key;  /* str */
    PyObject *text; /* the answer's bytes: what the next answers' texts are compared with */
    char *block;    /* its values, yyjson's copy of its text (strings point into it), same */
    V *root;
    const char *pool;
    uint8_t *same; /* per value: an object with its previous sibling's names */
    size_t bytes; /* the block and the text */
    unsigned misses, skip; /* answers in a row that did not line up; calls left alone */
    uint64_t used;
} Base;

static Base g_bases[MAX_BASES];
static int g_n_bases;
static size_t g_bases_bytes;
static uint64_t g_tick;
static unsigned long long g_n_warm, g_n_missed, g_n_kept;

static Base *base_find(PyObject *key) {
    for (int i = 0; i < g_n_bases; i++)
        if (g_bases[i].key == key || PyUnicode_Compare(g_bases[i].key, key) == 0)
            return &g_bases[i];
    return NULL;
}

static void base_drop(Base *b) {
    free(b->block);
    Py_DECREF(b->key);
    Py_DECREF(b->text);
    g_bases_bytes -= b->bytes;
    *b = g_bases[--g_n_bases];
}

/* Keep the parse of `text` (document d, read with READ_FLAGS, not in place) under key, in
 * place of what the key had. Nothing kept (and no error) when memory is short. */
static void base_keep(PyObject *key, PyObject *text, yyjson_doc *d) {
    size_t n = yyjson_doc_get_val_count(d), len = (size_t)PyBytes_GET_SIZE(text) + YYJSON_PADDING_SIZE;
    size_t block_size = n * sizeof(V) + len + n, bytes = block_size + (size_t)PyBytes_GET_SIZE(text);
    Base *old = base_find(key);
    unsigned misses = old ? old->misses : 0; /* what the answer it replaces had missed */
    if (old)
        base_drop(old);
    /* Checked whole, whatever the ignore pass removed in this call: copies of it need no check. */
    int rc = d->str_pool && bytes <= BASES_BYTES ? check_doc(yyjson_doc_get_root(d), 0, NULL) : 1;
    if (rc) {
        if (rc < 0)
            PyErr_Clear(); /* out of memory: then nothing is kept */
        return;
    }
    while (g_n_bases && (g_n_bases == MAX_BASES || g_bases_bytes + bytes > BASES_BYTES)) {
        Base *lru = &g_bases[0];
        for (int i = 1; i < g_n_bases; i++)
            if (g_bases[i].used < lru->used)
                lru = &g_bases[i];
        base_drop(lru);
    }
    char *block = malloc(block_size);
    if (!block)
        return;
    V *vals = (V *)block;
    char *pool = block + n * sizeof(V);
    uint8_t *same = (uint8_t *)pool + len;
    memcpy(vals, yyjson_doc_get_root(d), n * sizeof(V));
    memcpy(pool, d->str_pool, len);
    memset(same, 0, n);
    for (size_t i = 0; i < n; i++) {
        uint8_t t = unsafe_yyjson_get_type(&vals[i]);
        if (t == YYJSON_TYPE_STR || t == YYJSON_TYPE_RAW) { /* strings (names too) point into the copied text */
            vals[i].uni.str = pool + (vals[i].uni.str - d->str_pool);
        } else if (t == YYJSON_TYPE_ARR) {
            size_t m = unsafe_yyjson_get_len(&vals[i]);
            V *x = unsafe_yyjson_get_first(&vals[i]), *prev = NULL;
            for (size_t k = 0; k < m; k++, x = unsafe_yyjson_get_next(x)) {
                int obj = unsafe_yyjson_get_type(x) == YYJSON_TYPE_OBJ;
                /* names not moved yet from here on: same_names reads the text in the pool */
                if (obj && prev)
                    same[x - vals] = (uint8_t)same_names(prev, x);
                prev = obj ? x : NULL;
            }
        }
    }
    g_bases[g_n_bases++] = (Base){.key = Py_NewRef(key), .text = Py_NewRef(text), .block = block, .root = vals,
                                  .pool = pool, .same = same, .bytes = bytes, .misses = misses, .used = ++g_tick};
    g_bases_bytes += bytes;
    g_n_kept++;
}

/* ---- entry point -------------------------------------------------------------------------------- */

static char *g_pool;
static size_t g_pool_size;
/* the shadow document's values when built on the live one (align_doc), kept like the pool */
static V *g_out;
static uint32_t *g_src;
static size_t g_cap_out;
/* the live document's, when built on a kept answer */
static V *g_out_l;
static uint32_t *g_src_l;
static size_t g_cap_out_l;
/* The tables above are shared: a call that starts while another runs (another thread, while
 * the first one calls back into Python's _child) leaves its bodies to the Python walk. */
static int g_busy;
/* shadow texts from this size on are built on the live one (align_doc); and how many were */
static Py_ssize_t g_align_min = ALIGN_MIN, g_descend_min = DESCEND_MIN;
static unsigned long long g_n_built, g_n_parsed;

/* align_doc of text b on text a (parsed: its values from root, its strings in pool), into
 * the buffers *out, *src kept between calls (grown as needed, handed back) */
static int build_on(Align *al, PyObject *a, const char *pool, V *root, PyObject *b, const yyjson_alc *alc, V **out,
                    uint32_t **src, size_t *cap) {
    *al = (Align){.ta = PyBytes_AS_STRING(a), .na = (size_t)PyBytes_GET_SIZE(a), .tb = PyBytes_AS_STRING(b),
                  .nb = (size_t)PyBytes_GET_SIZE(b), .pool_a = pool, .base_a = root, .alc = alc, .out = *out,
                  .src = *src, .cap_out = *cap};
    al->budget = al->nb / 2 + 1024, al->descend_min = g_descend_min;
    int rc = align_doc(al, root);
    *out = al->out, *src = al->src, *cap = al->cap_out;
    return rc;
}

static yyjson_doc *parse(PyObject *body, const yyjson_alc *alc) {
    return yyjson_read_opts(PyBytes_AS_STRING(body), (size_t)PyBytes_GET_SIZE(body), READ_FLAGS, alc, NULL);
}

/* The kept pool for both documents, or NULL: yyjson's own allocator (malloc and realloc as
 * it goes), for pairs whose worst case exceeds POOL_KEEP; a pool sized for the worst case
 * of a 1 MiB body would be ~13 MiB. */
static const yyjson_alc *pool_for(PyObject *live, PyObject *shadow, yyjson_alc *alc) {
    size_t need = yyjson_read_max_memory_usage((size_t)PyBytes_GET_SIZE(live), READ_FLAGS) + 256;
    if (shadow != Py_None)
        need += yyjson_read_max_memory_usage((size_t)PyBytes_GET_SIZE(shadow), READ_FLAGS) + 256;
    if (need > POOL_KEEP)
        return NULL;
    if (need > g_pool_size) {
        char *grown = malloc(need);
        if (!grown)
            return NULL;
        free(g_pool);
        g_pool = grown;
        g_pool_size = need;
    }
    return yyjson_alc_pool_init(alc, g_pool, g_pool_size) ? alc : NULL;
}

/* a document's values, and the ignore pass over them */
static int prepare(Ctx *c, V *root, size_t n, TNode *trie, V **base, size_t *count, uint8_t **mask) {
    *base = root;
    *count = n;
    if (!trie)
        return 0;
    *mask = calloc(*count ? *count : 1, 1);
    if (!*mask) {
        PyErr_NoMemory();
        return -1;
    }
    c->masked = 1;
    TNode *states[1] = {trie};
    return strip(*base, states, 1, *base, *mask, &c->any_ignored);
}

PyDoc_STRVAR(diff_doc,
             "diff(live, shadow, child, render, ignored, trie, max_depth, room, reuse=None, max_fields=-1)\n--\n\n"
             "The JSON walk of proxy.diffing on two bodies (shadow None: live against itself).\n"
             "Returns (field keys, [(path, kind, live, shadow, key)]) with the first difference\n"
             "per key in walk order, as FieldDiff's fields: the values rendered as render() does\n"
             "(None where absent, and for all but the first `room` differences; 'length' ones\n"
             "carry str lengths); or None when the Python walk must do it. `reuse`: a str key\n"
             "under which the live answer's parse is kept for the next call with that key to\n"
             "build its documents on (the same result either way). `max_fields` >= 0: False\n"
             "when the walk would count more field keys than that (it stops there; the cost of\n"
             "a body of many distinct member names is bounded by it).");

static PyObject *jd_diff(PyObject *self, PyObject *args) {
    PyObject *live, *shadow, *child_fn, *render_fn, *ignored, *trie_obj, *reuse = Py_None, *render_pair_fn = Py_None;
    int max_depth;
    Py_ssize_t room, max_fields = -1;
    if (!PyArg_ParseTuple(args, "SOOOOOin|OnO:diff", &live, &shadow, &child_fn, &render_fn, &ignored, &trie_obj,
                          &max_depth, &room, &reuse, &max_fields, &render_pair_fn))
        return NULL;
    if (shadow != Py_None && !PyBytes_Check(shadow)) {
        PyErr_SetString(PyExc_TypeError, "shadow must be bytes or None");
        return NULL;
    }
    if (reuse != Py_None && !PyUnicode_Check(reuse)) {
        PyErr_SetString(PyExc_TypeError, "reuse must be a str or None");
        return NULL;
    }
    if (max_depth < 0 || max_depth > 200) {
        PyErr_SetString(PyExc_ValueError, "max_depth must be in 0..200");
        return NULL;
    }
    if (g_busy)
        Py_RETURN_NONE;
    g_busy = 1;
    PyObject *result = NULL;
    yyjson_doc *da = NULL, *db = NULL;
    yyjson_alc pool;
    Align al = {0}, al_l = {0};
    TNode *trie = NULL;
    Ctx *c = calloc(1, sizeof(Ctx));
    if (!c) {
        g_busy = 0;
        return PyErr_NoMemory();
    }
    if (!g_key_ids || g_n_nodes > MAX_NODES || g_n_keys > MAX_NODES || g_name_bytes > MAX_NAME_BYTES) {
        if (nodes_reset() < 0)
            goto done;
    }
    if (++g_gen == 0) { /* wrapped: forget every mark */
        for (int i = 0; i < g_n_keys; i++)
            g_keys[i].field_gen = g_keys[i].diff_gen = g_keys[i].scalars_gen = g_keys[i].last_gen =
                g_keys[i].run_gen = 0;
        g_gen = 1;
    }
    *c = (Ctx){.child_fn = child_fn, .render_fn = render_fn, .ignored = ignored, .room = room, .max_depth = max_depth,
               .render_pair_fn = render_pair_fn == Py_None ? NULL : render_pair_fn,
               .gen = g_gen, .max_fields = max_fields < 0 ? SIZE_MAX : (size_t)max_fields};
    if (trie_obj != Py_None && !(trie = trie_from(trie_obj)))
        goto done;
    const yyjson_alc *alc = pool_for(live, shadow, &pool);
    Py_ssize_t n_live = PyBytes_GET_SIZE(live);
    Base *kept = NULL;
    int keep = 0; /* keep the live answer's parse under `reuse` when done */
    if (reuse != Py_None && n_live >= g_align_min && n_live <= BASE_MAX_BODY &&
        (shadow == Py_None || PyBytes_GET_SIZE(shadow) >= g_align_min)) {
        kept = base_find(reuse);
        keep = !kept;
        if (kept && kept->skip) {
            keep = --kept->skip == 0; /* then start again from this answer */
            kept = NULL;
        } else if (kept) { /* the live document, built on the kept answer */
            kept->used = ++g_tick;
            int arc = build_on(&al_l, kept->text, kept->pool, kept->root, live, alc, &g_out_l, &g_src_l, &g_cap_out_l);
            if (arc == AL_NOT_JSON) {
                goto not_json;
            } else if (arc == AL_ERR) {
                goto done;
            } else if (arc != AL_OK) { /* it does not line up: parsed whole, and kept instead */
                align_free(&al_l);
                g_n_missed++;
                keep = 1;
                if (++kept->misses >= 2) {
                    kept->misses = 0, kept->skip = BASE_SKIP, keep = 0;
                }
                kept = NULL;
            } else {
                kept->misses = 0;
                g_n_warm++;
                c->src_a = al_l.src, c->kept_same = kept->same;
            }
        }
    }
    if (!kept && !(da = parse(live, alc)))
        goto not_json;
    V *ra = kept ? al_l.out : yyjson_doc_get_root(da), *rb = NULL;
    size_t na = kept ? al_l.n_out : yyjson_doc_get_val_count(da), nb = 0;
    if (shadow != Py_None) { /* the shadow document: built on the live one (or the kept one), else parsed whole */
        const char *pool_a = kept ? kept->pool : da->str_pool;
        int arc = pool_a && PyBytes_GET_SIZE(shadow) >= g_align_min
                      ? build_on(&al, kept ? kept->text : live, pool_a, kept ? kept->root : ra, shadow, alc, &g_out,
                                 &g_src, &g_cap_out)
                      : AL_GIVE_UP;
        if (arc == AL_OK) {
            g_n_built++;
            rb = al.out, nb = al.n_out, c->src_b = al.src;
        } else if (arc == AL_NOT_JSON) {
            goto not_json;
        } else if (arc == AL_ERR) {
            goto done;
        } else { /* AL_GIVE_UP */
            align_free(&al);
            if (!(db = parse(shadow, alc)))
                goto not_json;
            g_n_parsed++;
            rb = yyjson_doc_get_root(db), nb = yyjson_doc_get_val_count(db);
        }
    }
    int rc = prepare(c, ra, na, trie, &c->base_a, &c->count_a, &c->mask_a);
    if (!rc && rb)
        rc = prepare(c, rb, nb, trie, &c->base_b, &c->count_b, &c->mask_b);
    if (!rc && rb) { /* validation and equality in one pass */
        if (!(c->eq_a = calloc(c->count_a ? c->count_a : 1, 1))) {
            PyErr_NoMemory();
            goto done;
        }
        rc = fuse(c, c->base_a, c->base_b, 0);
        rc = rc == LEAVE ? 1 : rc < 0 ? -1 : 0;
    } else if (!rc) { /* the body against itself: validation only */
        rc = kept ? check_built(c, c->base_a, 0) : check_doc(c->base_a, 0, NULL);
    }
    if (rc) {
        if (rc > 0)
            result = Py_NewRef(Py_None);
        goto done;
    }
    if (!(c->events = PyList_New(0)))
        goto done;
    if (diff_json(c, ra, rb ? rb : ra) < 0)
        goto done;
    PyObject *fields = PyList_New((Py_ssize_t)c->n_fields);
    if (!fields)
        goto done;
    for (size_t i = 0; i < c->n_fields; i++)
        PyList_SET_ITEM(fields, (Py_ssize_t)i, Py_NewRef(g_keys[c->field_ids[i]].ck));
    result = PyTuple_Pack(2, fields, c->events);
    Py_DECREF(fields);
    if (result && keep && da)
        base_keep(reuse, live, da);
    goto done;
not_json:
    if (!PyErr_Occurred())
        result = Py_NewRef(Py_None);
done:
    if (!result && PyErr_ExceptionMatches(TooManyFields)) {
        PyErr_Clear();
        result = Py_NewRef(Py_False);
    }
    align_free(&al);
    align_free(&al_l);
    if (g_cap_out > OUT_KEEP) {
        free(g_out), free(g_src);
        g_out = NULL, g_src = NULL, g_cap_out = 0;
    }
    if (g_cap_out_l > OUT_KEEP) {
        free(g_out_l), free(g_src_l);
        g_out_l = NULL, g_src_l = NULL, g_cap_out_l = 0;
    }
    Py_XDECREF(c->events);
    free(c->field_ids);
    free(c->mask_a);
    free(c->mask_b);
    free(c->eq_a);
    free(c->arena);
    free(c->shapes);
    free(c);
    trie_free(trie);
    yyjson_doc_free(da);
    yyjson_doc_free(db);
    g_busy = 0;
    return result;
}

PyDoc_STRVAR(parse_only_doc, "parse_only(body)\n--\n\n"
                             "Parse body as diff() parses a live body (yyjson, the same settings and kept\n"
                             "pool) and walk nothing: the number of values, or None when it is not JSON.\n"
                             "For benchmarks: the floor under any diff of a body seen for the first time.");

static PyObject *jd_parse_only(PyObject *self, PyObject *args) {
    PyObject *body;
    if (!PyArg_ParseTuple(args, "S:parse_only", &body))
        return NULL;
    if (g_busy) {
        PyErr_SetString(PyExc_RuntimeError, "parse_only() during diff()");
        return NULL;
    }
    yyjson_alc pool;
    yyjson_doc *d = parse(body, pool_for(body, Py_None, &pool));
    if (!d)
        Py_RETURN_NONE;
    size_t n = yyjson_doc_get_val_count(d);
    yyjson_doc_free(d);
    return PyLong_FromSize_t(n);
}

PyDoc_STRVAR(build_doc, "build_on_live(min_size, descend_min=128)\n--\n\n"
                        "From which shadow body size diff() builds the shadow document on the live\n"
                        "one's text rather than parsing it whole (default 4096; 0: always; a size no\n"
                        "body reaches: never), and from which size a differing container is followed\n"
                        "member by member rather than parsed whole. Returns the previous settings.\n"
                        "For benchmarks and tests.");

static PyObject *jd_build_on_live(PyObject *self, PyObject *args) {
    Py_ssize_t size, descend = DESCEND_MIN;
    if (!PyArg_ParseTuple(args, "n|n:build_on_live", &size, &descend))
        return NULL;
    PyObject *was = Py_BuildValue("(nn)", g_align_min, g_descend_min);
    if (was)
        g_align_min = size, g_descend_min = descend;
    return was;
}

PyDoc_STRVAR(counts_doc, "counts()\n--\n\n"
                         "(built, parsed): how many shadow documents diff() built on the live one's text,\n"
                         "and how many it parsed whole, since the module was loaded.");

static PyObject *jd_counts(PyObject *self, PyObject *unused) {
    return Py_BuildValue("(KK)", g_n_built, g_n_parsed);
}

PyDoc_STRVAR(scanned_doc, "scanned()\n--\n\n"
                          "Bytes of text diff() read to find where the two texts agree and to follow\n"
                          "the values there, since the module was loaded: at most about twice the\n"
                          "shadow's length a build, whatever the shape of the document.");

static PyObject *jd_scanned(PyObject *self, PyObject *unused) { return PyLong_FromUnsignedLongLong(g_n_scanned); }

PyDoc_STRVAR(kept_doc, "kept()\n--\n\n"
                       "(warm, missed, kept, answers, bytes): calls whose documents were built on a kept\n"
                       "answer, calls whose live answer did not line up with the kept one, answers kept,\n"
                       "since the module was loaded; and the answers and bytes kept now.");

static PyObject *jd_kept(PyObject *self, PyObject *unused) {
    return Py_BuildValue("(KKKin)", g_n_warm, g_n_missed, g_n_kept, g_n_bases, (Py_ssize_t)g_bases_bytes);
}

PyDoc_STRVAR(forget_doc, "forget()\n--\n\n"
                         "Drop every kept answer (see diff's `reuse`). For tests and benchmarks.");

static PyObject *jd_forget(PyObject *self, PyObject *unused) {
    if (g_busy) {
        PyErr_SetString(PyExc_RuntimeError, "forget() during diff()");
        return NULL;
    }
    while (g_n_bases)
        base_drop(&g_bases[g_n_bases - 1]);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {{"diff", jd_diff, METH_VARARGS, diff_doc},
                                {"build_on_live", jd_build_on_live, METH_VARARGS, build_doc},
                                {"parse_only", jd_parse_only, METH_VARARGS, parse_only_doc},
                                {"counts", jd_counts, METH_NOARGS, counts_doc},
                                {"scanned", jd_scanned, METH_NOARGS, scanned_doc},
                                {"kept", jd_kept, METH_NOARGS, kept_doc},
                                {"forget", jd_forget, METH_NOARGS, forget_doc},
                                {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "proxy._jsondiff",
                                    "The shadow diff's JSON walk in C (native/jsondiff.c).", -1, methods};

PyMODINIT_FUNC PyInit__jsondiff(void) {
    if (!(K_CHANGED = PyUnicode_InternFromString("changed")) || !(K_TYPE = PyUnicode_InternFromString("type")) ||
        !(K_MISSING = PyUnicode_InternFromString("missing")) || !(K_EXTRA = PyUnicode_InternFromString("extra")) ||
        !(K_LENGTH = PyUnicode_InternFromString("length")) || !(S_ROOT = PyUnicode_InternFromString("$")) ||
        !(S_STAR = PyUnicode_InternFromString("[*]")) || !(S_ID = PyUnicode_InternFromString(".{id}")) || !(S_NULL = PyUnicode_InternFromString("null")) ||
        !(S_TRUE = PyUnicode_InternFromString("true")) || !(S_FALSE = PyUnicode_InternFromString("false")) ||
        !(TooManyFields = PyErr_NewException("proxy._jsondiff.TooManyFields", NULL, NULL)))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "WIDE_OBJECT", WIDE_OBJECT) < 0)
        Py_CLEAR(m);
    return m;
}
