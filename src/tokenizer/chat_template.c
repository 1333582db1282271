/* Chat templates: the Jinja templates of tokenizer_config.json are not
 * interpreted; the known families are recognised by their content and
 * rendered by hand exactly as HF's apply_chat_template(tokenize=False) does
 * for plain system/user/assistant conversations (no tools):
 *   - mg-llama-27m:  bos + "<|user|>\n...\n" / "<|assistant|>\n...\n"
 *   - Llama 3:       bos + "<|start_header_id|>role<|end_header_id|>\n\n" + trim(content) + "<|eot_id|>"
 *   - Llama 3.1+:    as Llama 3 plus the system header with "Cutting Knowledge Date"
 *   - Qwen2 / Qwen2.5 ChatML (default system prompt when none is given)
 *   - Qwen3 ChatML (<think> handling of assistant turns after the last query)
 * Anything else is MG_ERR_UNSUPPORTED. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tok_internal.h"

typedef enum { TPL_NONE, TPL_MG, TPL_LLAMA3, TPL_LLAMA31, TPL_QWEN2, TPL_QWEN25, TPL_QWEN3 } tpl_kind;

/* Returns 1 if t contains every NULL-terminated marker. */
static int has_all(const char *t, const char *const *markers) {
    for (; *markers; markers++)
        if (!strstr(t, *markers)) return 0;
    return 1;
}

/* Recognises a template family by its distinctive pieces. */
static tpl_kind detect(const char *t) {
    static const char *const qwen3[] = {"<|im_start|>", "<|im_end|>", "reasoning_content", "</think>", "last_query_index", NULL};
    static const char *const qwen25[] = {"<|im_start|>", "<|im_end|>", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", NULL};
    static const char *const qwen2[] = {"<|im_start|>", "You are a helpful assistant.<|im_end|>", "messages[0]['role'] != 'system'", NULL};
    static const char *const llama31[] = {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "Cutting Knowledge Date: December 2023", "Today Date: ", NULL};
    static const char *const llama3[] = {"bos_token", "'<|start_header_id|>' + message['role'] + '<|end_header_id|>", "| trim + '<|eot_id|>'", "loop.index0 == 0", NULL};
    static const char *const mg[] = {"{{ bos_token }}", "'<|user|>\n' + message['content'] + '\n'",
                                     "'<|assistant|>\n' + message['content'] + '\n'", "message['content'] + '\n\n'", NULL};
    if (has_all(t, qwen3)) return TPL_QWEN3;
    if (has_all(t, qwen25)) return TPL_QWEN25;
    if (has_all(t, qwen2) && !strstr(t, "tools")) return TPL_QWEN2;
    if (has_all(t, llama31)) return TPL_LLAMA31;
    if (has_all(t, llama3) && !strstr(t, "Cutting Knowledge")) return TPL_LLAMA3;
    if (has_all(t, mg)) return TPL_MG;
    return TPL_NONE;
}

/* Python str.isspace() for one code point. */
static int py_space(uint32_t cp) { return mg_tok_is_white_space(cp) || (cp >= 0x1C && cp <= 0x1F); }

/* Python str.strip(): sets *a and *e to the trimmed range of s[0..n). */
static void py_strip(const char *s, size_t n, size_t *a, size_t *e) {
    size_t i = 0, end = n;
    while (i < n) {
        uint32_t cp;
        size_t k = mg_tok_utf8_next((const unsigned char *)s + i, n - i, &cp, NULL);
        if (!k || !py_space(cp)) break;
        i += k;
    }
    while (end > i) {
        size_t b = end - 1;
        while (b > i && ((unsigned char)s[b] & 0xC0) == 0x80) b--;
        uint32_t cp;
        size_t k = mg_tok_utf8_next((const unsigned char *)s + b, end - b, &cp, NULL);
        if (!k || !py_space(cp)) break;
        end = b;
    }
    *a = i;
    *e = end;
}

/* Appends a NUL-terminated string. */
static mg_status put(mg_tok_buf *b, const char *s) { return mg_tok_buf_put(b, s, strlen(s)); }

/* Appends s with surrounding whitespace removed (Jinja's trim). */
static mg_status put_trim(mg_tok_buf *b, const char *s) {
    size_t a, e;
    py_strip(s, strlen(s), &a, &e);
    return mg_tok_buf_put(b, s + a, e - a);
}

/* Appends s as a JSON string the way Python's json.dumps(s, ensure_ascii=False) writes it. */
static mg_status put_json_string(mg_tok_buf *b, const char *s) {
    mg_status st = put(b, "\"");
    for (; *s && !st; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        switch (c) {
        case '"': st = put(b, "\\\""); break;
        case '\\': st = put(b, "\\\\"); break;
        case '\n': st = put(b, "\\n"); break;
        case '\r': st = put(b, "\\r"); break;
        case '\t': st = put(b, "\\t"); break;
        case '\b': st = put(b, "\\b"); break;
        case '\f': st = put(b, "\\f"); break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                st = put(b, esc);
            } else
                st = mg_tok_buf_put(b, s, 1);
        }
    }
    return st ? st : put(b, "\"");
}

/* mg-llama-27m: bos, then system content + blank line, <|user|>/<|assistant|> turns;
 * any other role is the template's raise_exception (MG_ERR_ARG). */
static mg_status render_mg(const mg_tokenizer *tok, const mg_chat_message *m, size_t n, int gen, mg_tok_buf *b) {
    mg_status st = put(b, tok->bos_token ? tok->bos_token : "");
    for (size_t i = 0; i < n && !st; i++) {
        if (!strcmp(m[i].role, "system")) {
            if (!(st = put(b, m[i].content))) st = put(b, "\n\n");
        } else if (!strcmp(m[i].role, "user") || !strcmp(m[i].role, "assistant")) {
            st = put(b, m[i].role[0] == 'u' ? "<|user|>\n" : "<|assistant|>\n");
            if (!st) st = put(b, m[i].content);
            if (!st) st = put(b, "\n");
        } else
            return mg_error_set(MG_ERR_ARG, "chat template: role must be system, user or assistant (got '%s')", m[i].role);
    }
    if (!st && gen) st = put(b, "<|assistant|>\n");
    return st;
}

/* One Llama 3 turn: header, trimmed content, <|eot_id|>. */
static mg_status llama3_turn(mg_tok_buf *b, const char *role, const char *content) {
    mg_status st = put(b, "<|start_header_id|>");
    if (!st) st = put(b, role);
    if (!st) st = put(b, "<|end_header_id|>\n\n");
    if (!st) st = put_trim(b, content);
    if (!st) st = put(b, "<|eot_id|>");
    return st;
}

/* Llama 3: bos before the first turn, every turn's content trimmed. */
static mg_status render_llama3(const mg_tokenizer *tok, const mg_chat_message *m, size_t n, int gen, mg_tok_buf *b) {
    mg_status st = MG_OK;
    for (size_t i = 0; i < n && !st; i++) {
        if (i == 0) st = put(b, tok->bos_token ? tok->bos_token : "");
        if (!st) st = llama3_turn(b, m[i].role, m[i].content);
    }
    if (!st && gen) st = put(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return st;
}

/* Llama 3.1/3.2/3.3 without tools: the system turn always comes first and
 * carries the knowledge-cutoff and date lines. */
static mg_status render_llama31(const mg_tokenizer *tok, const mg_chat_message *m, size_t n, int gen, mg_tok_buf *b) {
    char date[32] = "26 Jul 2024";
    if (strstr(tok->chat_template, "strftime_now")) { /* Llama 3.2: today's date */
        time_t now = time(NULL);
        struct tm tmv;
        static const char *const mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
        if (localtime_r(&now, &tmv)) snprintf(date, sizeof date, "%02d %s %d", tmv.tm_mday, mon[tmv.tm_mon], tmv.tm_year + 1900);
    }
    mg_status st = put(b, tok->bos_token ? tok->bos_token : "");
    size_t first = 0;
    if (!st) st = put(b, "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: ");
    if (!st) st = put(b, date);
    if (!st) st = put(b, "\n\n");
    if (!st && n > 0 && !strcmp(m[0].role, "system")) {
        st = put_trim(b, m[0].content);
        first = 1;
    }
    if (!st) st = put(b, "<|eot_id|>");
    for (size_t i = first; i < n && !st; i++) {
        if (!strcmp(m[i].role, "tool") || !strcmp(m[i].role, "ipython")) {
            /* tool results: a string "is iterable" in Jinja, so the template emits content | tojson */
            st = put(b, "<|start_header_id|>ipython<|end_header_id|>\n\n");
            if (!st) st = put_json_string(b, m[i].content);
            if (!st) st = put(b, "<|eot_id|>");
        } else
            st = llama3_turn(b, m[i].role, m[i].content);
    }
    if (!st && gen) st = put(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return st;
}

/* One ChatML turn. */
static mg_status chatml_turn(mg_tok_buf *b, const char *role, const char *content) {
    mg_status st = put(b, "<|im_start|>");
    if (!st) st = put(b, role);
    if (!st) st = put(b, "\n");
    if (!st) st = put(b, content);
    if (!st) st = put(b, "<|im_end|>\n");
    return st;
}

/* Qwen2.5 / Qwen3 tool-result turns: consecutive "tool" messages share one user turn. */
static mg_status qwen_tool(const mg_chat_message *m, size_t n, size_t i, mg_tok_buf *b) {
    mg_status st = MG_OK;
    if (i == 0 || strcmp(m[i - 1].role, "tool")) st = put(b, "<|im_start|>user");
    if (!st) st = put(b, "\n<tool_response>\n");
    if (!st) st = put(b, m[i].content);
    if (!st) st = put(b, "\n</tool_response>");
    if (!st && (i + 1 == n || strcmp(m[i + 1].role, "tool"))) st = put(b, "<|im_end|>\n");
    return st;
}

/* Qwen2 (default system "You are a helpful assistant.") and Qwen2.5 (default
 * system "You are Qwen, created by Alibaba Cloud...", tool turns) ChatML. */
static mg_status render_qwen2(tpl_kind kind, const mg_chat_message *m, size_t n, int gen, mg_tok_buf *b) {
    mg_status st = MG_OK;
    if (kind == TPL_QWEN2) {
        for (size_t i = 0; i < n && !st; i++) {
            if (i == 0 && strcmp(m[0].role, "system")) st = put(b, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n");
            if (!st) st = chatml_turn(b, m[i].role, m[i].content);
        }
    } else {
        if (n > 0 && !strcmp(m[0].role, "system")) st = chatml_turn(b, "system", m[0].content);
        else st = put(b, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n");
        for (size_t i = 0; i < n && !st; i++) {
            const char *r = m[i].role;
            if (!strcmp(r, "user") || (!strcmp(r, "system") && i > 0) || !strcmp(r, "assistant")) st = chatml_turn(b, r, m[i].content);
            else if (!strcmp(r, "tool")) st = qwen_tool(m, n, i, b);
        }
    }
    if (!st && gen) st = put(b, "<|im_start|>assistant\n");
    return st;
}

/* Length of s[0..n) after Python rstrip('\n'). */
static size_t rstrip_nl(const char *s, size_t n) {
    while (n > 0 && s[n - 1] == '\n') n--;
    return n;
}
/* Offset of the first non-'\n' byte (Python lstrip('\n')). */
static size_t lstrip_nl(const char *s, size_t n) {
    size_t i = 0;
    while (i < n && s[i] == '\n') i++;
    return i;
}

/* Finds the last occurrence of needle in s[0..n) or NULL. */
static const char *last_of(const char *s, size_t n, const char *needle) {
    size_t k = strlen(needle);
    const char *found = NULL, *p = s;
    while ((p = memmem(p, n - (size_t)(p - s), needle, k))) {
        found = p;
        p++;
    }
    return found;
}

/* Qwen3 ChatML without tools: assistant turns after the last real user query
 * carry a <think> block (empty when there is no reasoning and it is the last turn). */
static mg_status render_qwen3(const mg_chat_message *m, size_t n, int gen, mg_tok_buf *b) {
    mg_status st = MG_OK;
    if (n > 0 && !strcmp(m[0].role, "system")) st = chatml_turn(b, "system", m[0].content);
    /* the last user message that is not a tool response */
    size_t last_query = n ? n - 1 : 0;
    for (size_t k = n; k-- > 0;) {
        const char *c = m[k].content;
        size_t cl = strlen(c);
        int tool_resp = cl >= 15 && !strncmp(c, "<tool_response>", 15) && cl >= 16 && !strcmp(c + cl - 16, "</tool_response>");
        if (!strcmp(m[k].role, "user") && !tool_resp) {
            last_query = k;
            break;
        }
    }
    for (size_t i = 0; i < n && !st; i++) {
        const char *r = m[i].role, *c = m[i].content;
        if (!strcmp(r, "user") || (!strcmp(r, "system") && i > 0)) {
            st = chatml_turn(b, r, c);
        } else if (!strcmp(r, "assistant")) {
            size_t cl = strlen(c);
            const char *content = c, *reason = "";
            size_t content_len = cl, reason_len = 0;
            const char *end_think = strstr(c, "</think>");
            if (end_think) {
                /* content.split('</think>')[-1].lstrip('\n') */
                const char *after = last_of(c, cl, "</think>") + 8;
                size_t al = cl - (size_t)(after - c), sk = lstrip_nl(after, al);
                content = after + sk;
                content_len = al - sk;
                /* content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
                size_t bl = rstrip_nl(c, (size_t)(end_think - c));
                const char *open = last_of(c, bl, "<think>");
                const char *rs = open ? open + 7 : c;
                size_t rl = bl - (size_t)(rs - c), sk2 = lstrip_nl(rs, rl);
                reason = rs + sk2;
                reason_len = rl - sk2;
            }
            st = put(b, "<|im_start|>assistant\n");
            if (!st && i > last_query && (i + 1 == n || reason_len > 0)) {
                /* reasoning_content.strip('\n') and content.lstrip('\n') */
                size_t a = lstrip_nl(reason, reason_len), e = rstrip_nl(reason, reason_len);
                st = put(b, "<think>\n");
                if (!st && e > a) st = mg_tok_buf_put(b, reason + a, e - a);
                if (!st) st = put(b, "\n</think>\n\n");
                size_t sk = lstrip_nl(content, content_len);
                content += sk;
                content_len -= sk;
            }
            if (!st) st = mg_tok_buf_put(b, content, content_len);
            if (!st) st = put(b, "<|im_end|>\n");
        } else if (!strcmp(r, "tool")) {
            st = qwen_tool(m, n, i, b);
        }
    }
    if (!st && gen) st = put(b, "<|im_start|>assistant\n");
    return st;
}

mg_status mg_chat_render(const mg_tokenizer *tok, const mg_chat_message *msgs, size_t n, int add_generation_prompt,
                         char **out) {
    if (!tok || !out || (n && !msgs)) return mg_error_set(MG_ERR_ARG, "chat template: NULL argument");
    if (!tok->chat_template)
        return mg_error_set(MG_ERR_UNSUPPORTED, "chat template: the tokenizer has no chat_template (tokenizer_config.json missing or without one)");
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return mg_error_set(MG_ERR_ARG, "chat template: message %zu has a NULL role or content", i);
    tpl_kind kind = detect(tok->chat_template);
    mg_tok_buf b = {0};
    mg_status st;
    switch (kind) {
    case TPL_MG: st = render_mg(tok, msgs, n, add_generation_prompt, &b); break;
    case TPL_LLAMA3: st = render_llama3(tok, msgs, n, add_generation_prompt, &b); break;
    case TPL_LLAMA31: st = render_llama31(tok, msgs, n, add_generation_prompt, &b); break;
    case TPL_QWEN2:
    case TPL_QWEN25: st = render_qwen2(kind, msgs, n, add_generation_prompt, &b); break;
    case TPL_QWEN3: st = render_qwen3(msgs, n, add_generation_prompt, &b); break;
    default: {
        size_t len = strlen(tok->chat_template);
        return mg_error_set(MG_ERR_UNSUPPORTED,
                            "chat template not recognised (supported: mg-llama-27m, Llama 3/3.1, Qwen2/2.5, Qwen3 ChatML); "
                            "found %zu chars starting '%.80s'", len, tok->chat_template);
    }
    }
    if (!st && !b.p) st = mg_tok_buf_put(&b, "", 0);
    if (st) {
        mg_tok_buf_free(&b);
        return st;
    }
    *out = b.p;
    return MG_OK;
}
