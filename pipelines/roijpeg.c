/* Decoding a window of a JPEG at a DCT scale: libjpeg-turbo's jpeg_crop_scanline (only the iMCU columns that
   cover the window go through the IDCT and colour conversion), jpeg_skip_scanlines (rows above the window
   are entropy-decoded only) and an abort after the window's last row (rows below are never read). With
   restart markers (fastkd convert writes them), fk_jpeg_subimage first cuts the window's segments out of
   the entropy-coded data, so that nothing outside the window (and a margin of one MCU) is decoded at all.
   Loaded with ctypes by pipelines/jpeg_window.py; built by setup.py (optional: without it fastkd decodes
   whole images with PIL). */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>

struct fk_error {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char *msg;
    int msglen;
};

static void fk_error_exit(j_common_ptr cinfo) {
    struct fk_error *err = (struct fk_error *)cinfo->err;
    char buffer[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, buffer);
    snprintf(err->msg, err->msglen, "%s", buffer);
    longjmp(err->jump, 1);
}

/* Warnings (corrupt or truncated data that libjpeg would decode as grey) are kept: the call then fails and
   the caller decodes the image another way, which decides whether it is damaged. */
static void fk_emit_message(j_common_ptr cinfo, int level) {
    struct fk_error *err = (struct fk_error *)cinfo->err;
    if (level < 0 && err->pub.num_warnings++ == 0)
        (*cinfo->err->format_message)(cinfo, err->msg);
}

static void fk_setup(struct jpeg_decompress_struct *cinfo, struct fk_error *err, char *msg, int msglen) {
    cinfo->err = jpeg_std_error(&err->pub);
    err->pub.error_exit = fk_error_exit;
    err->pub.emit_message = fk_emit_message;
    err->msg = msg;
    err->msglen = msglen;
    msg[0] = 0;
}

/* The interface's version (the functions' arguments): pipelines/jpeg_window.py refuses a library built from
   an older roijpeg.c. 2: the pixel limit (max_pixels) of fk_jpeg_decode_window and fk_jpeg_subimage. */
int fk_roijpeg_version(void) { return 2; }

/* Decode rows [y0, y1) and at least columns [x0, x1) of the image scaled by 1/denom (1, 2, 4 or 8) as RGB
   into out (cap bytes; rows of *cw pixels, *cx the first column decoded: x0 moved left to an iMCU boundary).
   msg needs JMSG_LENGTH_MAX (200) bytes. Returns 0; -1 on an error, -2 on a warning (corrupt data), -3 for
   a window outside the scaled image or a buffer too small, -4 for an image whose declared width x height
   exceeds max_pixels (a decompression bomb: refused after reading the header, before libjpeg allocates
   anything that grows with the image, e.g. a progressive JPEG's whole coefficient buffer); msg says why. */
int fk_jpeg_decode_window(const unsigned char *data, unsigned long size, int denom, int x0, int y0, int x1,
                          int y1, unsigned char *out, unsigned long cap, int *cx, int *cw, char *msg, int msglen,
                          unsigned long long max_pixels) {
    struct jpeg_decompress_struct cinfo;
    struct fk_error err;
    JDIMENSION xoff, width;
    unsigned long stride;
    int row;
    fk_setup(&cinfo, &err, msg, msglen);
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, size);
    jpeg_read_header(&cinfo, TRUE);
    if ((unsigned long long)cinfo.image_width * cinfo.image_height > max_pixels) {
        snprintf(msg, msglen, "image declares %ux%u = %llu pixels, over the limit of %llu (a decompression bomb?)",
                 cinfo.image_width, cinfo.image_height,
                 (unsigned long long)cinfo.image_width * cinfo.image_height, max_pixels);
        jpeg_destroy_decompress(&cinfo);
        return -4;
    }
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)denom;
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    if (x0 < 0 || y0 < 0 || x1 > (int)cinfo.output_width || y1 > (int)cinfo.output_height || x0 >= x1 || y0 >= y1) {
        snprintf(msg, msglen, "window [%d, %d) x [%d, %d) outside the %ux%u image at scale 1/%d", x0, x1, y0, y1,
                 cinfo.output_width, cinfo.output_height, denom);
        jpeg_destroy_decompress(&cinfo);
        return -3;
    }
    xoff = (JDIMENSION)x0;
    width = (JDIMENSION)(x1 - x0);
    if (xoff > 0 || width < cinfo.output_width)
        jpeg_crop_scanline(&cinfo, &xoff, &width);
    stride = (unsigned long)width * 3;
    if (stride * (unsigned long)(y1 - y0) > cap) {
        snprintf(msg, msglen, "window needs %lu bytes, the buffer holds %lu", stride * (unsigned long)(y1 - y0), cap);
        jpeg_destroy_decompress(&cinfo);
        return -3;
    }
    if (y0 > 0)
        jpeg_skip_scanlines(&cinfo, (JDIMENSION)y0);
    for (row = 0; row < y1 - y0;) {
        JSAMPROW line = out + stride * (unsigned long)row;
        row += (int)jpeg_read_scanlines(&cinfo, &line, 1);
    }
    *cx = (int)xoff;
    *cw = (int)width;
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return err.pub.num_warnings ? -2 : 0;
}

/* ---------------------------------------------------------------------------------------------------------
   Cutting a window out of a JPEG with restart markers, without decoding anything.

   A baseline JPEG whose restart interval divides its MCU rows (fastkd convert writes them so) is a grid of
   independently decodable segments: each restart interval resets the DC predictions and starts byte-aligned.
   fk_jpeg_subimage copies the headers (frame size patched) and only the segments that cover the window, one
   MCU of margin around it, renumbering the restart markers: a smaller valid JPEG whose pixels inside the
   window are the whole image's (the margin covers the chroma upsampling's reach). The window [x0, x1) x
   [y0, y1) and the sub-JPEG's origin (*ox, *oy) and size (*ow, *oh) are in stored pixels. Returns the sub-JPEG's length; 0 when the JPEG is not of that kind
   (progressive, no restart interval, several scans, an interval that does not divide the MCU rows, markers
   not where the frame says, a frame of more than max_pixels or with more segments than the data can hold),
   the caller then decodes it another way; -1 when out (cap bytes) is too small. Every byte read lies in
   d[0, n). */
static unsigned be16(const unsigned char *p) { return ((unsigned)p[0] << 8) | p[1]; }

long fk_jpeg_subimage(const unsigned char *d, unsigned long n, int x0, int y0, int x1, int y1, unsigned char *out,
                      unsigned long cap, int *ox, int *oy, int *ow, int *oh, unsigned long long max_pixels) {
    unsigned long pos = 2, sof = 0, body = 0, p, w = 0, h = 0, *start = NULL, *end = NULL, total, nseg = 0, at;
    unsigned long mcus_x, mcus_y, per_row, r, c, r0, r1, c0, c1, count = 0;
    unsigned dri = 0, comps = 0, hmax = 1, vmax = 1, mcu_w, mcu_h, i;
    long result = 0;
    if (n < 4 || d[0] != 0xFF || d[1] != 0xD8)
        return 0;
    while (!body) { /* the markers before the scan */
        unsigned m, len;
        if (pos + 4 > n || d[pos] != 0xFF)
            return 0;
        m = d[pos + 1];
        if (m == 0xFF) { /* fill byte */
            pos++;
            continue;
        }
        len = be16(d + pos + 2);
        if (len < 2 || pos + 2 + len > n)
            return 0;
        if (m == 0xC0 || m == 0xC1) {
            if (len < 8)
                return 0;
            sof = pos;
            h = be16(d + pos + 5);
            w = be16(d + pos + 7);
            comps = d[pos + 9];
            if (comps < 1 || len < 8 + 3 * comps)
                return 0;
            for (i = 0; i < comps; i++) {
                unsigned s = d[pos + 11 + 3 * i];
                if ((s >> 4) > hmax) hmax = s >> 4;
                if ((s & 15) > vmax) vmax = s & 15;
            }
        } else if (m >= 0xC2 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
            return 0; /* progressive, lossless, hierarchical or arithmetic-coded */
        } else if (m == 0xDD && len >= 4) {
            dri = be16(d + pos + 4);
        } else if (m == 0xDA) {
            /* len >= 3: the component count d[pos + 4] lies inside the segment (a segment of length 2
               ending the buffer would put it at d[n]) */
            if (!sof || len < 3 || d[pos + 4] != comps) /* one interleaved scan of every component */
                return 0;
            body = pos + 2 + len;
        }
        pos += 2 + len;
    }
    if (!dri || !w || !h)
        return 0;
    if ((unsigned long long)w * h > max_pixels) /* a bomb: the whole decode refuses it (and says so) */
        return 0;
    mcu_w = comps == 1 ? 8 : 8 * hmax; /* a single-component scan's MCU is one block */
    mcu_h = comps == 1 ? 8 : 8 * vmax;
    mcus_x = (w + mcu_w - 1) / mcu_w;
    mcus_y = (h + mcu_h - 1) / mcu_h;
    if (mcus_x % dri)
        return 0;
    per_row = mcus_x / dri;
    total = per_row * mcus_y;
    if (total > (n - body) / 2 + 1) /* every segment but the last ends with a 2-byte RSTn marker: a frame
                                       declaring more than the data can hold is refused before allocating */
        return 0;
    if (x1 > (int)w) x1 = (int)w;
    if (y1 > (int)h) y1 = (int)h;
    if (x0 < 0 || y0 < 0 || x0 >= x1 || y0 >= y1)
        return 0;
    start = (unsigned long *)malloc(sizeof(unsigned long) * (total + 1));
    end = (unsigned long *)malloc(sizeof(unsigned long) * (total + 1));
    if (!start || !end)
        goto done;
    start[0] = body;
    for (p = body; p + 1 < n;) { /* segment boundaries: RSTn markers; 0xFF00 is a stuffed byte */
        const unsigned char *f = memchr(d + p, 0xFF, n - p - 1);
        unsigned b;
        if (!f)
            break;
        p = (unsigned long)(f - d);
        b = d[p + 1];
        if (b == 0x00 || b == 0xFF) {
            p += 1 + (b == 0x00);
            continue;
        }
        if (b >= 0xD0 && b <= 0xD7) {
            if (nseg + 1 >= total || b != 0xD0 + (nseg & 7))
                goto done; /* more segments than the frame has, or out of sequence */
            end[nseg++] = p;
            start[nseg] = p + 2;
            p += 2;
            continue;
        }
        end[nseg++] = p; /* EOI (or another marker): the scan ends */
        break;
    }
    if (nseg != total)
        goto done;
    /* the MCUs of the window and one of margin each side, widened to whole segments */
    r0 = (unsigned long)y0 / mcu_h;
    r0 = r0 ? r0 - 1 : 0;
    r1 = ((unsigned long)y1 + mcu_h - 1) / mcu_h + 1;
    if (r1 > mcus_y) r1 = mcus_y;
    c0 = (unsigned long)x0 / mcu_w;
    c0 = (c0 ? c0 - 1 : 0) / dri;
    c1 = ((unsigned long)x1 + mcu_w - 1) / mcu_w + 1;
    if (c1 > mcus_x) c1 = mcus_x;
    c1 = (c1 + dri - 1) / dri;
    *ox = (int)(c0 * dri * mcu_w);
    *oy = (int)(r0 * mcu_h);
    *ow = (int)((c1 * dri * mcu_w < w ? c1 * dri * mcu_w : w) - (unsigned long)*ox);
    *oh = (int)((r1 * mcu_h < h ? r1 * mcu_h : h) - (unsigned long)*oy);
    if (body > cap) {
        result = -1;
        goto done;
    }
    memcpy(out, d, body);
    out[sof + 5] = (unsigned char)(*oh >> 8);
    out[sof + 6] = (unsigned char)(*oh & 255);
    out[sof + 7] = (unsigned char)(*ow >> 8);
    out[sof + 8] = (unsigned char)(*ow & 255);
    at = body;
    for (r = r0; r < r1; r++) {
        for (c = c0; c < c1; c++) {
            unsigned long s = r * per_row + c, len = end[s] - start[s];
            if (at + len + 4 > cap) {
                result = -1;
                goto done;
            }
            memcpy(out + at, d + start[s], len);
            at += len;
            out[at++] = 0xFF;
            out[at++] = (r + 1 == r1 && c + 1 == c1) ? 0xD9 : (unsigned char)(0xD0 + (count++ & 7));
        }
    }
    result = (long)at;
done:
    free(start);
    free(end);
    return result;
}
